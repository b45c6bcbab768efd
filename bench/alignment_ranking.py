"""How often the gradient alignment stored in benchmark runs ranks each
steer skill's true feeding domain first (issue 13).

    python bench/alignment_ranking.py RUNS.db [RUNS.db ...]

For every finished run, every checkpoint and every steer skill
whose feeding domains the suite declares (the skills table keeps them even
when the controller did not see them), the domains are ranked three ways:

  signed      the centred alignment at that checkpoint
              (backend.evaluation.alignment)
  magnitude   its absolute value at that checkpoint
  prior       backend.affinity.aligned_prior: the mean positive part over
              the first checkpoint and the latest ALIGN_WINDOW ones, what
              the affinity uses with the links hidden

Prints the share of (run, checkpoint, skill) triples whose first-ranked
domain is a true one, per rule, overall and by checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RULES = ("signed", "magnitude", "prior")


def rank_hits(store, run_id: int) -> dict[tuple[str, int], list[bool]]:
    """(rule, step) -> one hit (True) or miss per steer skill with declared domains."""
    from backend import affinity

    domains = [d["name"] for d in store.run(run_id)["config"]["data"]["domains"]]
    true = {s["name"]: s["domains"] for s in store.skills(run_id) if s["kind"] == "steer" and s["domains"]}
    series: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in store.alignment(run_id):
        series[r["skill"]][r["domain"]].append(r)
    out: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for s, by_domain in series.items():
        if s not in true:
            continue
        steps = sorted({r["step"] for rows in by_domain.values() for r in rows})
        for step in steps:
            now = {d: next((r["value"] for r in rows if r["step"] == step), 0.0) for d, rows in by_domain.items()}
            out["signed", step].append(max(now, key=now.get) in true[s])
            out["magnitude", step].append(max(now, key=lambda d: abs(now[d])) in true[s])
            prior = affinity.aligned_prior({d: [r for r in rows if r["step"] <= step]
                                            for d, rows in by_domain.items()}, domains)
            if prior is not None:
                out["prior", step].append(domains[int(prior[0].argmax())] in true[s])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dbs", nargs="+", help="benchmark databases (bench/data_efficiency.py --db)")
    args = ap.parse_args(argv)
    from backend.store import Store

    hits: dict[tuple[str, int], list[bool]] = defaultdict(list)
    runs = 0
    for path in args.dbs:
        store = Store(path)
        try:
            for run in store.runs():
                if run["status"] != "finished":
                    continue
                runs += 1
                for key, h in rank_hits(store, run["id"]).items():
                    hits[key] += h
        finally:
            store.close()
    steps = sorted({step for _, step in hits})
    print(f"{runs} finished runs; share of (run, checkpoint, skill) whose first-ranked domain feeds the skill")
    print("step      " + "".join(f"{rule:>12}" for rule in RULES))
    for step in steps:
        print(f"{step:<10}" + "".join(f"{_share(hits[rule, step]):>12}" for rule in RULES))
    total = {rule: [h for (r, _), hs in hits.items() if r == rule for h in hs] for rule in RULES}
    print("all       " + "".join(f"{_share(total[rule]):>12}" for rule in RULES))


def _share(h: list[bool]) -> str:
    return f"{sum(h) / len(h):.0%} ({len(h)})" if h else "-"


if __name__ == "__main__":
    main()
