#!/usr/bin/env bash
# GPU check on a CUDA machine: the gpu-small preset (a ~125M Llama, bf16
# autocast) through the training-throughput benchmark (eager), then the
# project's stretch with train.compile against a bare compiled loop of the
# same model in the same run (the bar: ratio >= 0.9), then a short real run
# of the loop (compiled) with lm-eval on the GPU. Output goes to $OUT (or
# ./gpu_check).
#
# Without a GPU it is a dry run of the same Python on the CPU (tiny preset,
# a few steps): it checks the script, its figures are not the GPU's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1

if ! { command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; }; then
    echo "no GPU here: dry run on the CPU (preset tiny), not the GPU's figures" | tee "$OUT/gpu.txt"
    python3 bench/compiled_throughput.py --preset tiny --device cpu --steps 5 --rounds 2 2>&1 \
        | grep -v -i warn | tee "$OUT/compiled.txt"
    exit "${PIPESTATUS[0]}"
fi

nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 bench/throughput.py --preset gpu-small --steps 20 --blocks 10 2>&1 | grep -v -i warn | tee "$OUT/throughput.txt"
python3 bench/compiled_throughput.py --preset gpu-small --steps 50 --rounds 3 2>&1 | grep -v -i warn \
    | tee "$OUT/compiled.txt"
awk '/^ratio project\/bare compiled:/ {print "compiled ratio " $NF ((($NF + 0) >= 0.9) ? " >= 0.9: met" : " < 0.9: NOT met")}' \
    "$OUT/compiled.txt" | tee -a "$OUT/compiled.txt"
cat > /tmp/gpu_run.toml <<'TOML'
preset = "gpu-small"
name = "gpu-check"
[train]
steps = 300
checkpoint_every = 100
batch_size = 32
lr = 6e-4
warmup_steps = 50
device = "cuda"
compile = true
TOML
/usr/bin/time -v python3 -m backend run --config /tmp/gpu_run.toml --db /tmp/gpu/cl.db --json > "$OUT/run.json" 2> "$OUT/run.err"; echo "run exit $?"
tail -5 "$OUT/run.err" | cut -c1-300
python3 -m backend show 1 --db /tmp/gpu/cl.db | tee "$OUT/show.txt"
