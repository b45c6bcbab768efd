"""Token cache at scale: a generated text folder is cached, then trained on
by a real worker whose memory must not grow with the corpus.

    python bench/data_cache.py [--gb 1.0] [--steps 30] [--keep DIR]

1. Writes `--gb` GB of text (.txt files of ~1 MB, words drawn from a fixed
   vocabulary) into a temporary folder (nothing is committed).
2. Builds the folder domain's token cache (backend.data.cache: parallel
   processes, one per core) and prints its build time, tokens and tokens/s.
3. Trains a short run (`python -m backend run`, preset tiny's model, a
   synthetic domain plus the big folder) that reuses that cache, and the
   same run on a 1 MB folder; it samples each worker's resident memory
   (/proc/<pid>/status VmRSS) every 0.2 s and prints the peak of each and
   their difference: the worker's RSS growth with the corpus (goal: < 300
   MB), and the worker's training tokens/s (the heartbeat's, median).

Figures at 1 GB, with the command and the machine's load: docs/data_cache.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FILE_BYTES = 1 << 20  # ~1 MB a file: one document each


def write_corpus(folder: Path, gb: float, seed: int = 0) -> int:
    """`gb` GB of space-separated words in ~1 MB .txt files; returns bytes written."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    # 5,000 words of 2-9 letters, drawn Zipf-like as in real text
    words = np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(5000)])
    p = 1 / np.arange(1, len(words) + 1)
    p /= p.sum()
    folder.mkdir(parents=True, exist_ok=True)
    total, i = 0, 0
    while total < gb * 1e9:
        text = " ".join(words[rng.choice(len(words), FILE_BYTES // 6, p=p)])  # ~6 bytes a word with its space
        (folder / f"doc-{i:05d}.txt").write_text(text)
        total += len(text)
        i += 1
    return total


def rss_mb(pid: int) -> float | None:
    """Resident memory of process `pid` in MB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def train(work: Path, corpus: Path, tok_dir: Path, cache_dir: Path, steps: int, name: str) -> dict:
    """Run the worker in the foreground on `corpus`; its peak RSS (MB) and
    median training tokens/s."""
    from backend.store import Store

    cfg = work / f"{name}.toml"
    cfg.write_text(f"""preset = "tiny"
name = "{name}"
[data]
tokenizer_path = "{tok_dir}"
cache_dir = "{cache_dir}"
[[data.domains]]
name = "strings"
source = "synthetic"
skills = ["copy"]
[[data.domains]]
name = "{name}"
source = "folder"
path = "{corpus}"
[evaluation]
skills = ["copy"]
[train]
steps = {steps}
checkpoint_every = {steps}
""")
    db = work / f"{name}.db"
    env = {**os.environ, "CLOSED_LOOP_POLL_S": "0.5"}
    proc = subprocess.Popen([sys.executable, "-m", "backend", "run", "--db", str(db), "--config", str(cfg)],
                            cwd=Path(__file__).resolve().parent.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "w"))
    peak, tps = 0.0, []
    store = None
    while proc.poll() is None:
        m = rss_mb(proc.pid)
        peak = max(peak, m or 0.0)
        if store is None and db.exists():
            store = Store(db)
        if store is not None:
            try:
                runs = store.runs()
            except Exception:  # the worker is still creating the schema
                runs = []
            if runs and runs[-1]["phase"] == "training" and runs[-1]["tokens_per_s"]:
                tps.append(runs[-1]["tokens_per_s"])
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"the {name} run failed: see {work / (name + '.log')}")
    return {"peak_mb": peak, "tokens_per_s": statistics.median(tps) if tps else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the generated text folder (GB)")
    ap.add_argument("--steps", type=int, default=30, help="training steps of each run")
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary one, removed)")
    args = ap.parse_args()

    from backend.config import DomainConfig
    from backend.data.cache import PARALLEL_MIN_BYTES, token_cache
    from backend.data.domains import build_domains
    from backend.data.tokenizer import load_tokenizer, train_tokenizer

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="data-cache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        size = write_corpus(work / "big", args.gb)
        write_corpus(work / "small", 0.001)
        print(f"corpus: {size / 1e9:.2f} GB in {len(list((work / 'big').iterdir()))} files "
              f"(written in {time.perf_counter() - t:.0f} s)")

        # the run loads this tokenizer (data.tokenizer_path), so it finds the cache built here
        domains = build_domains([DomainConfig(name="strings", source="synthetic", skills=["copy"]),
                                 DomainConfig(name="big", source="folder", path=str(work / "big"))])
        train_tokenizer(domains, 512, 0, work / "tok")
        tokenizer = load_tokenizer(work / "tok")
        cache_dir = work / "cache"
        t = time.perf_counter()
        cache = token_cache("big", domains[1].shards(), tokenizer, cache_dir)
        build = time.perf_counter() - t
        n = len(cache.tokens)
        procs = os.cpu_count() if size >= PARALLEL_MIN_BYTES else 1
        print(f"cache build: {build:.1f} s for {n:,} tokens ({n / build:,.0f} tokens/s, {procs} processes), "
              f"{cache.tokens.dtype}, {cache.n_docs} documents")

        small = train(work, work / "small", work / "tok", cache_dir, args.steps, "small")
        big = train(work, work / "big", work / "tok", cache_dir, args.steps, "big")
        reused = len([p for p in cache_dir.iterdir() if p.name.startswith("big-")]) == 1
        print(f"worker on 1 MB: peak RSS {small['peak_mb']:.0f} MB, {small['tokens_per_s']:,.0f} training tokens/s")
        print(f"worker on {size / 1e9:.2f} GB: peak RSS {big['peak_mb']:.0f} MB, "
              f"{big['tokens_per_s']:,.0f} training tokens/s, cache reused: {reused}")
        print(f"RSS growth with the corpus: {big['peak_mb'] - small['peak_mb']:+.0f} MB (goal < 300 MB)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
