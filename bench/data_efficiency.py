"""Data efficiency: does steering the mixture from evaluation beat the
mixtures people use now, for the same token budget?

    python bench/data_efficiency.py                      # full: 6 methods x 3 seeds, ~45 min on 2 cores
    python bench/data_efficiency.py --quick              # tiny model, 1 seed: CI-sized
    python bench/data_efficiency.py --seeds 0 1 2 --budget-tokens 921600 \
        --methods natural,deficit --suite configs/efficiency.toml --jobs 2
    python bench/data_efficiency.py --links learned --reuse OLD.db   # declared links hidden;
                                                     # natural, uniform, doremi, odm from OLD.db

Methods (each a real closed-loop run of the suite's model, policy auto):
  natural     the mixture held at weights proportional to domain size
  uniform     the mixture held uniform
  deficit     the default controller, starting from the natural mixture
  doremi      DoReMi's EG on excess loss over a reference model: the
              `uniform` run of the same seed (DoReMi trains its reference on
              the baseline uniform mixture); that run's tokens and wall time
              are counted as doremi's overhead
  odm         EXP3 on held-out domain loss, from the natural mixture
  mixing-law  per-skill law fitted on the run's history, from the natural mixture

--links learned hides the declared links from every controller that reads
them (deficit, mixing-law: controller.links = "learned"): each learns the affinity
of domains to skills from its own run (backend/affinity.py). natural,
uniform, doremi and odm read no links, so --reuse DB [DB ...] takes their
finished runs (and those of any method run before with the same links
setting) from earlier benchmark databases when the run config matches (same
seed, budget, checkpoints, suite); the table marks them "reused".

The suite (--suite, a run config file like `run --config` takes: model,
domains, skills, evaluation, batch) defaults to configs/efficiency.toml: the
built-in synthetic suite, with a large domain that teaches no measured skill
(Python stdlib code, most of the tokens), random strings, and skills from
learnable to out of reach for this model.

Per method, from the seed-averaged curves of the mean steer score (exact
match, mean over the 3 steer templates, mean over skills) against tokens:
  tokens to reach   the first point (linear between checkpoints) where the
                    curve reaches the natural mixture's final mean steer
                    score, plus overhead tokens (doremi's reference run);
                    "-" if never
  speedup           natural's tokens to reach (its FIRST reach of its own
                    final score, not its budget: natural is 1.00x by
                    construction) / the method's tokens to reach
  at budget         mean steer score at natural's budget, overhead counted
                    (doremi's reference run spends a budget: its score then
                    is the untrained model's)
  final mean / worst steer score, final held-out mean (seed-averaged)
  wall              seconds per run (training + evaluation, as measured; the
                    same evaluation runs at every checkpoint of every method),
                    doremi's reference run added

Writes the table and the curves as JSON (--out) and a plotly HTML figure
(--html); prints the table, how often the default controller's final
affinity matrix ranks each moved skill's true feeding domain (the suite's
declared links) first, and, as its last line, the default controller's
speedup.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT = "deficit"
METHODS = {
    # method: (controller.strategy, mixture.initial)
    "natural": ("static", "natural"),
    "uniform": ("static", "uniform"),
    "deficit": ("deficit", "natural"),
    "doremi": ("doremi", "natural"),
    "odm": ("odm", "natural"),
    "mixing-law": ("mixing-law", "natural"),
}
REFERENCE = {"doremi": "uniform"}  # method -> the method whose run is its reference model
# tiny model on two skills it picks up within 40 steps (parity: the answer's
# format, at chance; brackets: a little more)
QUICK = {"preset": "tiny", "skills": ["parity", "brackets"], "budget_tokens": 8 * 48 * 40, "checkpoints": 4,
         "seeds": [0]}


def reads_links(method: str) -> bool:
    """Whether the method's strategy reads the links of domains to skills
    (its class says `reads_links`)."""
    from backend.controllers import STRATEGIES

    return getattr(STRATEGIES.get(METHODS[method][0]), "reads_links", False)


def method_config(suite, method: str, seed: int, steps: int, checkpoint_every: int, threads: int,
                  reference_losses: dict | None = None, links: str = "declared"):
    strategy, initial = METHODS[method]
    d = suite.to_dict()
    d.update(name=f"efficiency-{method}-s{seed}", seed=seed, policy="auto")
    d["mixture"] = {"initial": initial}
    # the suite's options belong to its own strategy; another starts from its defaults
    options = d["controller"]["options"] if strategy == suite.controller.strategy else {}
    if reference_losses is not None:
        options = {**options, "reference_losses": reference_losses}
    d["controller"] = {**d["controller"], "strategy": strategy, "options": options,
                       "links": links if reads_links(method) else "declared"}
    d["train"] = {**d["train"], "steps": steps, "checkpoint_every": checkpoint_every, "threads": threads}
    from backend.config import from_dict

    return from_dict(d)


def _train(db: str, run_id: int) -> dict:
    """One run in a child process (its config sets its torch threads)."""
    from backend.worker import work

    t0 = time.time()
    status = work(db, run_id, progress=False)
    return {"run_id": run_id, "status": status, "seconds": time.time() - t0}


SAME_RUN = ("seed", "model", "data", "evaluation", "mixture")
"""The config sections two runs of one method must share for one to stand in for the other."""


def stored_links(config: dict) -> str:
    """The links setting of a stored run config (controller.links; a run
    stored before it existed read the declared links)."""
    c = config["controller"]
    return c.get("links") or c["options"].get("links") or "declared"


def reusable(olds: list, cfg) -> tuple[object, dict] | None:
    """(store, run) of the first finished run in `olds` (Stores of earlier
    benchmarks) with the config `cfg` would get: same name, SAME_RUN
    sections, train steps and checkpoints, strategy, and links setting."""
    want = cfg.to_dict()
    for old in olds:
        for r in old.runs():
            c = r["config"]
            if (r["name"] == cfg.name and r["status"] == "finished"
                    and all(c.get(k) == want.get(k) for k in SAME_RUN)
                    and (c["train"]["steps"], c["train"]["checkpoint_every"]) ==
                    (cfg.train.steps, cfg.train.checkpoint_every)
                    and c["controller"]["strategy"] == cfg.controller.strategy
                    and stored_links(c) == want["controller"]["links"]):
                return old, r
    return None


def ranking(store, run_id: int) -> tuple[int, int, list[str]]:
    """(skills whose final affinity ranks their true feeding domain first,
    skills that moved, the misranked ones as "skill: top vs true"): a skill
    moved when its final latent interval stands above its first one and
    above chance; its true domains are the suite's declared links (the
    skills table keeps them when the controller does not see them)."""
    from backend import affinity

    last = max(c["step"] for c in store.checkpoints(run_id))
    links = affinity.matrix(store.affinity(run_id, last))
    est: dict[str, list[dict]] = {}
    for e in store.capability(run_id):
        est.setdefault(e["skill"], []).append(e)
    right, moved, wrong = 0, 0, []
    for s in store.skills(run_id):
        series = est.get(s["name"], [])
        if s["kind"] != "steer" or not s["domains"] or s["name"] not in links or len(series) < 2:
            continue
        if series[-1]["lo"] <= max(series[0]["hi"], s["chance"] or 0.0):
            continue
        moved += 1
        top = affinity.ranked(links[s["name"]])[0]
        if top in s["domains"]:
            right += 1
        else:
            wrong.append(f"{s['name']}: {top} vs {'/'.join(s['domains'])}")
    return right, moved, wrong


def final_domain_losses(store, run_id: int) -> dict[str, float]:
    rows = store.measurements(run_id, kind="domain_loss")
    last = max(r["step"] for r in rows)
    return {r["domain"]: float(r["value"]) for r in rows if r["step"] == last}


def curves(store, run_id: int) -> dict:
    """Per checkpoint: tokens, mean steer score, per-skill steer score, held-out mean."""
    from collections import defaultdict

    em = [m for m in store.measurements(run_id) if m["metric"] == "exact_match"]
    steer: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    hold: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for m in em:
        (steer if m["kind"] == "steer" else hold)[m["step"]][m["skill"]].append(float(m["value"]))
    out = {"tokens": [], "steer": [], "holdout": [], "per_skill": []}
    for ck in store.checkpoints(run_id):
        s = ck["step"]
        per = {k: sum(v) / len(v) for k, v in sorted(steer[s].items())}
        out["tokens"].append(ck["tokens_seen"])
        out["per_skill"].append(per)
        out["steer"].append(sum(per.values()) / len(per))
        h = [sum(v) / len(v) for v in hold[s].values()]
        out["holdout"].append(sum(h) / len(h) if h else None)
    return out


def tokens_to_reach(tokens: list[float], scores: list[float], threshold: float) -> float | None:
    """First token count where the curve reaches threshold, linear between
    checkpoints; 0 when the untrained model already does (no speedup is
    defined then: the baseline never rose)."""
    for i, (t, s) in enumerate(zip(tokens, scores)):
        if s >= threshold:
            if i == 0:
                return 0.0
            t0, s0 = tokens[i - 1], scores[i - 1]
            return t0 + (t - t0) * (threshold - s0) / (s - s0)
    return None


def score_at(tokens: list[float], scores: list[float], at: float) -> float:
    """The curve's score at `at` tokens, linear between checkpoints (its
    first score before the first checkpoint, its last after the last)."""
    if at <= tokens[0]:
        return scores[0]
    for (t0, s0), (t1, s1) in zip(zip(tokens, scores), zip(tokens[1:], scores[1:])):
        if at <= t1:
            return s0 + (s1 - s0) * (at - t0) / (t1 - t0)
    return scores[-1]


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarise(runs: dict[str, dict[int, dict]], budget: int) -> dict:
    """runs[method][seed] = {curve, seconds}; the table rows and the threshold."""
    seeds = sorted(runs["natural"])
    avg = {}
    for m, by_seed in runs.items():
        cs = [by_seed[s]["curve"] for s in seeds if s in by_seed]
        n = min(len(c["tokens"]) for c in cs)
        skills = list(cs[0]["per_skill"][-1])
        avg[m] = {
            "tokens": cs[0]["tokens"][:n],
            "steer": [mean(c["steer"][i] for c in cs) for i in range(n)],
            "holdout": [mean(c["holdout"][i] for c in cs) for i in range(n)],
            "per_skill_final": {k: mean(c["per_skill"][n - 1][k] for c in cs) for k in skills},
        }
    threshold = avg["natural"]["steer"][-1]
    # natural's FIRST reach of its own final score: natural is 1.00x by construction
    t_natural = tokens_to_reach(avg["natural"]["tokens"], avg["natural"]["steer"], threshold)
    rows = []
    for m, a in avg.items():
        ref = REFERENCE.get(m)
        overhead = budget if ref else 0
        t = tokens_to_reach(a["tokens"], a["steer"], threshold)
        per_seed = []
        for s in seeds:
            c, nat = runs[m].get(s, {}).get("curve"), runs["natural"][s]["curve"]
            ts = tokens_to_reach(c["tokens"], c["steer"], nat["steer"][-1]) if c else None
            tn = tokens_to_reach(nat["tokens"], nat["steer"], nat["steer"][-1])
            per_seed.append(None if not ts or not tn else tn / (ts + overhead))
        wall = mean(runs[m][s]["seconds"] + (runs[ref][s]["seconds"] if ref else 0) for s in seeds if s in runs[m])
        rows.append({
            "method": m,
            "tokens_to_reach": None if t is None else t + overhead,
            "overhead_tokens": overhead,
            "speedup": None if not t or not t_natural else t_natural / (t + overhead),
            "speedup_per_seed": per_seed,
            "speedup_without_overhead": None if not t or not t_natural else t_natural / t,
            "at_budget": score_at(a["tokens"], a["steer"], a["tokens"][-1] - overhead),
            "final_steer": a["steer"][-1],
            "worst_steer": min(a["per_skill_final"].values()),
            "worst_skill": min(a["per_skill_final"], key=a["per_skill_final"].get),
            "final_holdout": a["holdout"][-1],
            "wall_s": wall,
        })
    return {"threshold": threshold, "t_natural": t_natural, "seeds": seeds, "rows": rows, "curves": avg}


def fmt(x, spec=".3f", none="-"):
    return none if x is None else format(x, spec)


def print_table(summary: dict) -> None:
    print(f"\nthreshold: natural's final mean steer score {summary['threshold']:.3f}, first reached at "
          f"{fmt(summary['t_natural'], ',.0f')} of its {summary['curves']['natural']['tokens'][-1]:,} tokens; "
          f"seeds {summary['seeds']}; links {summary.get('links', 'declared')}")
    if not summary["t_natural"]:
        print("natural never rose above the untrained model: no speedup is defined (budget too small?)")
    head = (f"{'method':<11} {'tokens to reach':>15} {'speedup':>8} {'per seed':>17} {'at budget':>9} "
            f"{'final steer':>11} {'worst steer':>17} {'held-out':>8} {'wall s':>7}")
    print(head)
    print("-" * len(head))
    for r in summary["rows"]:
        per = "/".join(fmt(x, ".2f") for x in r["speedup_per_seed"])
        print(f"{r['method']:<11} {fmt(r['tokens_to_reach'], ',.0f'):>15} {fmt(r['speedup'], '.2f', '-') + 'x' * (r['speedup'] is not None):>8} "
              f"{per:>17} {r['at_budget']:>9.3f} {r['final_steer']:>11.3f} {r['worst_steer']:>7.3f} "
              f"({r['worst_skill']:<8}) {fmt(r['final_holdout']):>8} {r['wall_s']:>7.0f}"
              + ("  reused" if r.get("reused") else ""))


def write_html(summary: dict, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35],
                        subplot_titles=("Mean steer score vs tokens (mean over seeds)",
                                        "Speedup over natural (tokens to reach its final score)"))
    for m, a in summary["curves"].items():
        fig.add_trace(go.Scatter(x=a["tokens"], y=a["steer"], mode="lines+markers", name=m,
                                 line={"width": 3 if m == DEFAULT else 1.5}), row=1, col=1)
    fig.add_hline(y=summary["threshold"], line_dash="dot", annotation_text="natural, final", row=1, col=1)
    rows = summary["rows"]
    fig.add_trace(go.Bar(x=[r["method"] for r in rows], y=[r["speedup"] or 0 for r in rows], showlegend=False,
                         text=[fmt(r["speedup"], ".2f") + "x" for r in rows]), row=1, col=2)
    fig.update_xaxes(title_text="training tokens", row=1, col=1)
    fig.update_yaxes(title_text="exact match", row=1, col=1)
    fig.update_layout(title="Closed Loop data-efficiency benchmark", height=480, width=1200)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True)  # inlined: the page opens offline


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget-tokens", type=int, help="training tokens per run (default: the suite's steps)")
    ap.add_argument("--checkpoints", type=int, default=12, help="checkpoints per run (each may steer)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; natural is always run")
    ap.add_argument("--suite", default=str(ROOT / "configs" / "efficiency.toml"))
    ap.add_argument("--quick", action="store_true", help="tiny model, 1 seed, small budget (for CI)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (each gets cpu_count/jobs threads)")
    ap.add_argument("--db", help="SQLite file for the runs (default: a new temporary one)")
    ap.add_argument("--links", choices=("declared", "learned"), default="declared",
                    help="learned: hide the declared links from every controller that reads them")
    ap.add_argument("--reuse", nargs="+", default=[],
                    help="SQLite files of earlier benchmarks: their finished runs stand in for new ones where the "
                         "config matches (links setting included)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "data_efficiency.json"))
    ap.add_argument("--html", default=str(ROOT / "docs" / "data_efficiency.html"))
    args = ap.parse_args(argv)

    from backend import config as config_mod
    from backend.store import Store
    from backend.vocab import tokens_per_step
    from backend.worker import create_run

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown {unknown} (known: {', '.join(METHODS)})")
    methods = ["natural"] + [m for m in methods if m != "natural"]
    for m in list(methods):
        if REFERENCE.get(m) and REFERENCE[m] not in methods:
            methods.insert(1, REFERENCE[m])
    if args.quick:
        tiny = config_mod.preset(QUICK["preset"])
        suite = tiny.replace(evaluation={**tiny.to_dict()["evaluation"], "skills": QUICK["skills"]})
        budget, checkpoints = args.budget_tokens or QUICK["budget_tokens"], QUICK["checkpoints"]
        seeds = QUICK["seeds"] if args.seeds == ap.get_default("seeds") else args.seeds
    else:
        suite = config_mod.load(args.suite)
        budget = args.budget_tokens or suite.train.steps * tokens_per_step(suite.train.batch_size,
                                                                           suite.data.context_length)
        checkpoints, seeds = args.checkpoints, args.seeds
    per_step = tokens_per_step(suite.train.batch_size, suite.data.context_length)
    checkpoint_every = max(1, budget // per_step // checkpoints)
    steps = checkpoint_every * checkpoints
    budget = steps * per_step

    db = args.db or str(Path(tempfile.mkdtemp(prefix="efficiency-")) / "efficiency.db")
    store = Store(db)
    olds = [Store(p) for p in args.reuse]
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    print(f"{len(methods)} methods x {len(seeds)} seeds, {steps} steps x {per_step} tokens = {budget:,} tokens "
          f"per run, {checkpoints} checkpoints; {args.jobs} jobs x {threads} threads; runs in {db}", flush=True)

    t0 = time.time()
    runs: dict[str, dict[int, dict]] = {m: {} for m in methods}
    run_ids: dict[tuple[str, int], int] = {}
    reused: dict[str, dict[int, object]] = {}  # method -> seed -> the Store its run comes from
    for m in methods if olds else []:  # an earlier benchmark's runs stand in
        found = {s: reusable(olds, method_config(suite, m, s, steps, checkpoint_every, threads, links=args.links))
                 for s in seeds}
        if all(found.values()):
            reused[m] = {s: old for s, (old, _) in found.items()}
            for s, (old, r) in found.items():
                ck = old.checkpoints(r["id"])
                runs[m][s] = {"run_id": r["id"], "seconds": ck[-1]["wall_time"], "curve": curves(old, r["id"])}
            print(f"  {m:<11} reused " + ", ".join(f"run {r['id']} of {old.path}" for old, r in found.values()),
                  flush=True)
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        pending: dict[cf.Future, tuple[str, int]] = {}

        def submit(m: str, seed: int, reference_losses: dict | None = None) -> None:
            cfg = method_config(suite, m, seed, steps, checkpoint_every, threads, reference_losses, args.links)
            rid = create_run(store, cfg)
            run_ids[(m, seed)] = rid
            pending[pool.submit(_train, db, rid)] = (m, seed)

        # references first, so the runs that wait on them can start early
        order = sorted(methods, key=lambda m: (m not in REFERENCE.values(), m in REFERENCE))
        for m in order:
            if m not in REFERENCE and m not in reused:
                for s in seeds:
                    submit(m, s)
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                m, s = pending.pop(fut)
                res = fut.result()
                if res["status"] != "finished":
                    raise SystemExit(f"run {res['run_id']} ({m}, seed {s}) ended {res['status']}: "
                                     f"{store.run(res['run_id'])['error']}")
                runs[m][s] = {"run_id": res["run_id"], "seconds": res["seconds"],
                              "curve": curves(store, res["run_id"])}
                print(f"  {m:<11} seed {s}: final mean steer {runs[m][s]['curve']['steer'][-1]:.3f} "
                      f"in {res['seconds']:.0f} s (run {res['run_id']})", flush=True)
                for dep, ref in REFERENCE.items():
                    if ref == m and dep in methods and dep not in reused:
                        submit(dep, s, final_domain_losses(store, res["run_id"]))

    summary = summarise(runs, budget)
    for r in summary["rows"]:
        r["reused"] = r["method"] in reused
    ranks = {}
    for m in methods:
        if reads_links(m):
            got = [ranking(reused.get(m, {}).get(s, store), runs[m][s]["run_id"]) for s in seeds]
            ranks[m] = {"right": sum(g[0] for g in got), "moved": sum(g[1] for g in got),
                        "misranked": [w for g in got for w in g[2]]}
    summary.update(links=args.links, ranking=ranks,
                   reused={f"{m}/{s}": o.path for m, by_seed in reused.items() for s, o in by_seed.items()},
                   budget_tokens=budget, steps=steps, checkpoints=checkpoints, suite=suite.to_dict(),
                   quick=args.quick, jobs=args.jobs, threads_per_job=threads, seconds_total=round(time.time() - t0),
                   db=db, run_ids={f"{m}/{s}": r for (m, s), r in run_ids.items()})
    print_table(summary)
    print(f"total {summary['seconds_total']} s")
    for m, k in ranks.items():
        if not k["moved"]:
            print(f"{m}: {args.links} matrix: no skill moved with an affinity recorded, nothing to rank")
            continue
        wrong = "; wrong: " + ", ".join(k["misranked"]) if k["misranked"] else ""
        print(f"{m}: {args.links} matrix ranks the true feeding domain first for {100 * k['right'] / k['moved']:.0f}% "
              f"of skills that moved ({k['right']}/{k['moved']} over seeds{wrong})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))
    if args.html:
        write_html(summary, Path(args.html))
    row = next((r for r in summary["rows"] if r["method"] == DEFAULT), None)
    if row is not None:
        print(f"{DEFAULT} speedup over natural: {fmt(row['speedup'], '.2f')}x")
    return summary


if __name__ == "__main__":
    main()
