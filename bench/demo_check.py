"""What a demo run shows at its end (issue 12): per steer skill its last
latent estimate, interval and chance level, whether it stands above chance
beyond its 95% interval and from which checkpoint, the last proposal's
reasons, the mixture per checkpoint, and any Goodhart alert.

    python -m backend run --preset demo --db /tmp/demo.db     # ~5 min on 2 quiet cores
    python bench/demo_check.py /tmp/demo.db [--run 1]

The last line counts the steer skills above chance (the demo's goal: at
least 5)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.store import Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db", help="the run's SQLite database")
    ap.add_argument("--run", type=int, default=1)
    args = ap.parse_args()
    store, run = Store(args.db), args.run
    chance = {s["name"]: s["chance"] or 0.0 for s in store.skills(run)}
    steer = sorted(s["name"] for s in store.skills(run) if s["kind"] == "steer")
    est: dict[str, list[dict]] = {}
    for e in store.capability(run):
        est.setdefault(e["skill"], []).append(e)
    checkpoints = store.checkpoints(run)
    print(f"run {run}: {store.run(run)['status']}, {len(checkpoints)} checkpoints, "
          f"wall {checkpoints[-1]['wall_time']:.0f} s" if checkpoints else f"run {run}: no checkpoint")
    above = []
    for s in steer:
        if not est.get(s):
            print(f"{s:12s} not estimated")
            continue
        last = est[s][-1]
        first = next((e["step"] for e in est[s] if e["lo"] > chance[s]), None)
        if last["lo"] > chance[s]:
            above.append(s)
        print(f"{s:12s} {last['score']:.3f} [{last['lo']:.3f}, {last['hi']:.3f}] chance {chance[s]:.3f}  "
              f"{'above' if last['lo'] > chance[s] else 'at chance':9s} first above at step {first}")
    proposals = store.proposals(run)
    if proposals:
        print(f"last proposal (step {proposals[-1]['step']}):")
        for d, line in proposals[-1]["rationale"].items():
            print(f"  {d}: {line}")
    for c in checkpoints:
        print(f"  mixture trained to step {c['step']}: " + ", ".join(f"{d} {w:.2f}" for d, w in c["weights"].items()))
    print("Goodhart alerts:", [a["message"] for a in store.events(run, "goodhart_alert")] or "none")
    print(f"steer skills above chance beyond their 95% interval: {len(above)} of {len(steer)} ({', '.join(above)})")


if __name__ == "__main__":
    main()
