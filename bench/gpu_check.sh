#!/usr/bin/env bash
# GPU check on a CUDA machine: the gpu-small preset (a ~125M Llama, bf16
# autocast) through the training-throughput benchmark, then a short real run
# of the loop with lm-eval on the GPU. Output goes to $OUT (or ./gpu_check).
set -uo pipefail
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 bench/throughput.py --preset gpu-small --steps 20 --rounds 3 2>&1 | grep -v -i warn | tee "$OUT/throughput.txt"
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
TOML
/usr/bin/time -v python3 -m backend run --config /tmp/gpu_run.toml --db /tmp/gpu/cl.db --json > "$OUT/run.json" 2> "$OUT/run.err"; echo "run exit $?"
tail -5 "$OUT/run.err" | cut -c1-300
python3 -m backend show 1 --db /tmp/gpu/cl.db | tee "$OUT/show.txt"
