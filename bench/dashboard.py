"""Server-side render time of every dashboard page on a large run.

    python bench/dashboard.py [--checkpoints 1000 --skills 50 --domains 8]

Fills a fresh database through the Store API (bulk inserts) with one run of
N checkpoints x S skills (half steer, half their held-out variants) x D
domains: per skill and checkpoint three templates' exact match and a latent
capability estimate, a held-out loss per domain and checkpoint, a proposal
decided and applied at every checkpoint (as an auto run makes them; the
last one left pending) with its forecasts scored at the next checkpoint, a
Goodhart alert, and the training curves as the loop logs them (one
train_log row per window of ceil(steps / TRAIN_LOG_ROWS) steps, plus the
partial window at each checkpoint). Then renders each page
with streamlit.testing's AppTest and prints seconds per page: `cold` is the
first render in this process (frames not cached yet), `warm` the median of
the next renders. Goal: every page under 1 s.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.client import TRAIN_LOG_ROWS  # noqa: E402
from backend.config import preset  # noqa: E402
from backend.decisions import decide  # noqa: E402
from backend.guard import raise_alert  # noqa: E402
from backend.store import Store  # noqa: E402
from backend.vocab import holdout_name  # noqa: E402

PAGES = [None, "pages/capabilities.py", "pages/training.py", "pages/mixture.py", "pages/compare.py", "pages/schedules.py",
         "pages/new_run.py"]


def fill(store: Store, *, checkpoints: int, skills: int, domains: int, seed: int = 0) -> int:
    """One run with synthetic but plausible rows; returns its id."""
    rng = random.Random(seed)
    every, tokens_per_step = 100, 16 * 64
    names = [f"domain{j}" for j in range(domains)]
    cfg = preset("demo").to_dict()
    cfg.update(name="bench", policy="human")
    cfg["data"]["domains"] = [{"name": n, "source": "synthetic", "skills": [], "path": None, "size_tokens": None}
                              for n in names]
    cfg["train"].update(steps=checkpoints * every, checkpoint_every=every)
    run_id = store.create_run(cfg)
    store.set_domains(run_id, [{"name": n, "source": "synthetic", "skills": []} for n in names])
    bases = [f"skill{i:02d}" for i in range(skills // 2)]
    skill_rows = []
    for i, b in enumerate(bases):
        feeds = [names[i % domains]]
        skill_rows += [{"name": b, "base": b, "kind": "steer", "domains": feeds, "tasks": [f"cl_{b}"]},
                       {"name": holdout_name(b), "base": b, "kind": "holdout", "domains": feeds,
                        "tasks": [f"cl_{holdout_name(b)}"]}]
    store.set_skills(run_id, skill_rows)

    weights = {n: 1 / domains for n in names}
    store.add_segment(run_id, from_step=0, tokens_at=0, weights=weights, source="initial")
    rate = {b: rng.uniform(0.5, 6) / checkpoints for b in bases}
    rows, latent = [], []
    for k in range(checkpoints):
        step, tokens = k * every, k * every * tokens_per_step
        store.add_checkpoint(run_id, step=step, tokens_seen=tokens, train_loss=4 - 2 * k / checkpoints,
                             wall_time=k * 3.0, tokens_per_s=5e4, path="", weights=weights)
        for b in bases:
            p = 1 - math.exp(-rate[b] * k)
            for name, kind, true in ((b, "steer", p), (holdout_name(b), "holdout", 0.8 * p)):
                for t in ((0, 2, 3) if kind == "steer" else (1,)):
                    v = min(1.0, max(0.0, true + rng.gauss(0, 0.03)))
                    rows.append({"step": step, "tokens_seen": tokens, "skill": name, "kind": kind,
                                 "task": f"cl_{name}_t{t}", "metric": "exact_match", "value": v,
                                 "stderr": math.sqrt(max(v * (1 - v), 0.01) / 200), "n": 200,
                                 "prompt_variant": f"template{t}", "decoding": "greedy", "scorer": "exact_match"})
                half = 0.05 * math.exp(-k / checkpoints)
                latent.append({"step": step, "skill": name, "tokens_seen": tokens, "score": true,
                               "lo": max(0.0, true - half), "hi": min(1.0, true + half),
                               "slope": rate[b] * (1 - p), "slope_lo": 0.0, "slope_hi": 2 * rate[b] * (1 - p),
                               "slope_per_token": rate[b] * (1 - p) / (every * tokens_per_step), "raw_mean": true})
        for n in names:
            rows.append({"step": step, "tokens_seen": tokens, "domain": n, "kind": "domain_loss",
                         "task": f"heldout_loss/{n}", "metric": "loss", "scorer": "nll",
                         "value": 2 + 3 * math.exp(-3 * k / checkpoints) + rng.gauss(0, 0.02), "stderr": 0.01, "n": 64})
        new = {n: max(0.01, w * math.exp(rng.gauss(0, 0.1))) for n, w in weights.items()}
        total = sum(new.values())
        new = {n: w / total for n, w in new.items()}
        pid = store.add_proposal(run_id, step=step, strategy="deficit", current_weights=weights, weights=new,
                                 rationale={n: f"{weights[n]:.3f} -> {new[n]:.3f}" for n in names},
                                 forecast={b: {"score": 0.5, "expected": 0.55} for b in bases})
        if k < checkpoints - 1:
            decide(store, pid, "approve", by="auto")
            store.apply_approved(run_id, step=step, tokens_at=tokens)
            weights = new
        store.mark_checkpoint(run_id, step, evaluated=True, boundary_done=True)
    store.add_measurements(run_id, rows)
    store.set_capability(run_id, latent)
    # every applied proposal's forecasts, scored one checkpoint later (record_forecast_errors' rows)
    truth = {(r["step"], r["skill"]): r["score"] for r in latent}
    errors = []
    for p in store.proposals(run_id, status="applied"):
        step = p["applied_step"] + every
        for b in bases:
            if (step, b) in truth:
                forecast = truth[(p["applied_step"], b)] + rng.gauss(0.01, 0.02)
                errors.append({"proposal_id": p["id"], "skill": b, "step": step, "proposal_step": p["step"],
                               "applied_step": p["applied_step"], "score": truth[(p["applied_step"], b)],
                               "forecast": forecast, "actual": truth[(step, b)],
                               "error": truth[(step, b)] - forecast, "basis": "bench"})
    store.add_forecast_errors(run_id, errors)
    window = -(-checkpoints * every // TRAIN_LOG_ROWS)  # steps per train_log row (backend.client.StepLog)
    ends = sorted({s for s in range(window, checkpoints * every + 1, window)} | {k * every for k in range(1, checkpoints)})
    store.add_train_log(run_id, [{"step": s, "tokens_seen": s * tokens_per_step,
                                  "loss": 2 + 3 * math.exp(-3 * s / (checkpoints * every)) + rng.gauss(0, 0.05),
                                  "lr": 3e-4 * min(1.0, s / 1000), "grad_norm": abs(rng.gauss(1.0, 0.3)),
                                  "tokens_per_s": 5e4 + rng.gauss(0, 2e3)} for s in ends])
    raise_alert(store, run_id, step=(checkpoints - 1) * every, skill=bases[0],
                message=f"Goodhart guard: {bases[0]} rose beyond its held-out variant.", data={})
    store.update_run(run_id, status="finished", step=checkpoints * every - every,
                     tokens_seen=(checkpoints - 1) * every * tokens_per_step, tokens_per_s=5e4)
    return run_id


def render_times(db: Path, repeat: int, scratch: Path) -> list[tuple[str, float, float]]:
    # a server imports these once at start; keep that out of the page times
    import plotly.graph_objects as go
    from streamlit.testing.v1 import AppTest

    from backend import charts, frames, report  # noqa: F401
    go.Figure(data=[go.Scatter(), go.Heatmap(), go.Bar()]).to_json()

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    # AppTest's first run scans every installed package for components
    # (~1.5 s, once per AppTest), and the first chart of a process loads
    # plotly's and Streamlit's chart code: a server pays both once, at start.
    # Spend them on a small database, so `cold` below is what a page costs
    # when its frames are not cached yet (a new run, or a new checkpoint).
    small = scratch / "small.db"
    fill(Store(small), checkpoints=3, skills=4, domains=2)
    os.environ["CLOSED_LOOP_DB"] = str(small)
    at.run()
    os.environ["CLOSED_LOOP_DB"] = str(db)
    out = []
    for page in PAGES:
        times = []
        for _ in range(1 + repeat):
            if page:
                at.switch_page(page)
            t = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t)
            if at.exception:
                raise SystemExit(f"{page}: {at.exception[0].message}\n{at.exception[0].stack_trace}")
        out.append((page or "app.py (home)", times[0], statistics.median(times[1:])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=1000)
    ap.add_argument("--skills", type=int, default=50, help="steer + held-out skills (even)")
    ap.add_argument("--domains", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="warm renders per page")
    ap.add_argument("--db", help="database to fill (default: a temporary file)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="cl-bench-") as scratch:
        db = Path(args.db) if args.db else Path(scratch) / "bench.db"
        for suffix in ("", "-wal", "-shm"):  # always a fresh database: one run, known size
            Path(str(db) + suffix).unlink(missing_ok=True)
        t = time.perf_counter()
        fill(Store(db), checkpoints=args.checkpoints, skills=args.skills, domains=args.domains)
        print(f"filled {db}: {args.checkpoints} checkpoints x {args.skills} skills x {args.domains} domains "
              f"in {time.perf_counter() - t:.1f} s")
        results = render_times(db, args.repeat, Path(scratch))
    print(f"{'page':<26} {'cold s':>8} {'warm s':>8}")
    for page, cold, warm in results:
        flag = "" if max(cold, warm) < 1.0 else "  over 1 s"
        print(f"{page:<26} {cold:>8.3f} {warm:>8.3f}{flag}")
    worst = max(max(c, w) for _, c, w in results)
    print(f"slowest: {worst:.3f} s ({'meets' if worst < 1.0 else 'misses'} the 1 s goal)")


if __name__ == "__main__":
    main()
