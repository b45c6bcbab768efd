"""Measurement fidelity: is the latent capability closer to the truth than the
raw small evaluation?

    python bench/fidelity.py [--preset demo] [--seed 0] [--truth-items 2000] [--out docs/fidelity.json]
    python bench/fidelity.py --db runs/closed_loop.db --run 3     # a stored run

Runs the demo-sized loop (policy auto) unless --db/--run name a stored run,
then at every checkpoint evaluates the checkpoint's weights on
--truth-items fresh items per steer skill (never seen by the run's own
evaluation; item i under steer template i mod 3) with the same lm-eval
pipeline. That 2,000-item score is the truth. It compares, per checkpoint
and skill:
  raw     the run's small evaluation as one number: exact match under
          template 0 on that checkpoint's items (what a loop without a
          noise model would steer by)
  raw3    the mean over the three steer templates of that evaluation
          (each template asks its own items)
  latent  the estimate of backend/capability.py, causal: it uses
          checkpoints up to this one only
and prints their mean absolute errors against the truth and the coverage of
the latent 95% interval.

Coverage allows for the truth's own sampling error (2,000 items): the
estimate minus the truth is within Z95 times the root sum of squares of the
interval's half-width on that side (as an sd) and the truth's Wilson sd
toward the estimate. That is what a calibrated interval covers 95% of the
time. Also printed: the truth strictly inside the interval (a truth of 0
never is: a logit-space interval never reaches 0), and the two 95%
intervals merely overlapping (too lenient: a calibrated interval reaches
about 99% that way).

    python bench/fidelity.py --from-json docs/fidelity.json
    python bench/fidelity.py --seeds 0,1,2,3,4 [--preset demo-c50] [--ablate] [--set NAME=VALUE]

re-score saved runs (their measurements and truths) with the current
estimator, without training or evaluating again: one file, or the saved
runs of --preset for each seed (docs/fidelity.json for demo seed 0,
docs/fidelity-seedN.json, docs/fidelity-c50-seedN.json), per seed and pooled
over all their (checkpoint, skill) pairs; with --ablate, pooled, once per
piece of the estimator taken out (ABLATIONS); --set changes a constant of
the estimator first (the settings tried in docs/fidelity.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from backend.vocab import Z95, tokens_per_step  # noqa: E402


# bench presets: overrides of the demo preset's train section. "demo" is the
# demo's training when the saved runs were made (900 steps, a checkpoint
# every 100, lr 2e-3): fixed here so that recalibrating the demo preset
# does not change what a new seed of this bench measures.
DEMO_900 = {"steps": 900, "checkpoint_every": 100, "lr": 2e-3, "warmup_steps": 50}
PRESETS = {"demo": DEMO_900, "demo-c50": {**DEMO_900, "checkpoint_every": 50}}


def truth_tasks(skills: list[str], n: int, seed: int, data_dir: Path, max_gen_toks: int) -> list[dict]:
    """One generation task per skill: n fresh steer items, item i under
    steer template i mod 3 (seeds disjoint from the run's evaluation)."""
    from backend.data.skills import STEER_TEMPLATES, get_skill
    from backend.evaluation.tasks import task_config

    data_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    for s in skills:
        sk = get_skill(s)
        path = data_dir / f"truth_{s}.jsonl"
        with open(path, "w") as f:
            for i in range(n):
                fields, answer = sk.make(random.Random(f"truth/{s}/{seed}/{i}"), "steer")
                t = STEER_TEMPLATES[i % len(STEER_TEMPLATES)]
                f.write(json.dumps({"prompt": sk.templates[t].format(**fields), "answer": answer}) + "\n")
        cfg = task_config(s, "steer", 0, "gen", path, max_gen_toks)
        cfg["task"] = f"truth_{s}"
        configs.append(cfg)
    return configs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                    help="demo: the demo preset (10 checkpoints, every 100 steps); demo-c50: the same run "
                         "checkpointed and steered every 50 steps (18 checkpoints, half the tokens apart)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", help="a stored run's database (skip training)")
    ap.add_argument("--run", type=int, help="the stored run's id")
    ap.add_argument("--truth-items", type=int, default=2000)
    ap.add_argument("--out", help="write the per-checkpoint table as JSON here")
    ap.add_argument("--from-json", help="recompute the summary from a saved --out file")
    ap.add_argument("--seeds", help="re-score the saved runs of --preset for these seeds (0,1,2), per seed "
                                    "and pooled; with --out, write the table as JSON there")
    ap.add_argument("--ablate", action="store_true",
                    help="with --seeds: the pooled figures with each piece of the estimator taken out in turn")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="with --seeds: re-score with a constant of backend/capability.py set (a Python literal, "
                         "e.g. TREND_SHARE=0.5 or TREND_NOISE=(0.02,0.005)); repeatable")
    ap.add_argument("--scorers", action="store_true",
                    help="with --seeds: per skill, how well the answer loss could stand in for exact match "
                         "(fitted to the truth: an upper bound) against the templates' mean")
    args = ap.parse_args()
    for item in args.set:
        set_constant(item)
    if args.seeds:
        seed_list = [int(x) for x in args.seeds.split(",")]
        (ablate if args.ablate else loss_bound if args.scorers else seeds)(args.preset, seed_list, args.out)
        return
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows = relatent(saved["rows"], saved["measurements"], saved["tokens_per_checkpoint"],
                        saved["summary"]["seed"])
        report(rows, {**saved["summary"], "from_json": args.from_json}, args.out, saved["measurements"],
               saved["tokens_per_checkpoint"])
        return

    import torch
    from safetensors.torch import load_file

    from backend import config as config_mod
    from backend.capability import estimate
    from backend.data.tokenizer import load_tokenizer
    from backend.evaluation.harness import HarnessEvaluator
    from backend.loop import run_dir_for
    from backend.model import build_model
    from backend.store import Store
    from backend.trainer import pick_device
    from backend.worker import create_run, work

    t0 = time.time()
    if args.db:
        store, run_id = Store(args.db), args.run
    else:
        store = Store(Path(tempfile.mkdtemp()) / "fidelity.db")
        base = config_mod.preset("demo")
        cfg = base.replace(name=args.preset, seed=args.seed, policy="auto",
                           train={**base.to_dict()["train"], **PRESETS[args.preset], "threads": args.threads},
                           controller={**base.to_dict()["controller"], "cap": 0.7})  # as when the runs were saved
        run_id = create_run(store, cfg)
        print(f"training run {run_id} ({args.preset}, seed {args.seed}) ...", flush=True)
        work(store.path, run_id, progress=False)
    cfg = config_mod.from_dict(store.run(run_id)["config"])
    t_run = time.time() - t0
    run_dir = run_dir_for(store, run_id)
    tokenizer = load_tokenizer(cfg.data.tokenizer_path or run_dir / "tokenizer")
    model = build_model(cfg.model, len(tokenizer), cfg.data.context_length,
                        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, seed=cfg.seed)
    skills = cfg.steer_skills
    tasks = truth_tasks(skills, args.truth_items, 10_000 + cfg.seed, Path(tempfile.mkdtemp()),
                        cfg.evaluation.max_gen_toks)
    device = pick_device(cfg.train.device)
    model.to(device)
    evaluator = HarnessEvaluator(model, tokenizer, tasks, batch_size=256,
                                 max_length=cfg.data.context_length, device=device)

    ms = store.measurements(run_id)
    tokens_per_ckpt = cfg.train.checkpoint_every * tokens_per_step(cfg.train.batch_size, cfg.data.context_length)
    chance = {s["name"]: s["chance"] for s in store.skills(run_id) if s.get("chance") is not None}
    latent = estimate(ms, tokens_per_ckpt, skills, chance=chance)
    rows = []
    t1 = time.time()
    for ck in store.checkpoints(run_id):
        state = load_file(str(Path(ck["path"]) / "model.safetensors"), device=str(device))
        model.load_state_dict(state, strict=False)
        model.tie_weights()
        with torch.no_grad():
            truth = {m["skill"]: m["value"] for m in evaluator.evaluate()[0]}
        for s in skills:
            em = {m["prompt_variant"]: m["value"] for m in ms if m["step"] == ck["step"] and m["skill"] == s
                  and m["metric"] == "exact_match"}
            e = next(x for x in latent[s] if x["step"] == ck["step"])
            rows.append({"step": ck["step"], "skill": s, "truth": truth[s], "raw": em["template0"],
                         "raw3": sum(em.values()) / len(em), "latent": e["score"], "lo": e["lo"], "hi": e["hi"]})
        print(f"step {ck['step']:>5}: truth " + " ".join(f"{s}={truth[s]:.2f}" for s in skills), flush=True)
    t_truth = time.time() - t1

    summary = {
        "run": run_id, "preset": cfg.name, "seed": cfg.seed, "checkpoints": len(rows) // len(skills),
        "skills": skills, "items_per_template": cfg.evaluation.items_per_skill,
        "item_rounds": cfg.evaluation.item_rounds, "truth_items": args.truth_items,
        "seconds_run": round(t_run), "seconds_truth": round(t_truth),
    }
    # every scorer of every skill (held-out twins and loglikelihood scorers too), as the estimator sees them
    raw_ms = [{k: m.get(k) for k in ("step", "tokens_seen", "skill", "metric", "value", "n", "stderr",
                                     "prompt_variant")} for m in ms if m["skill"] is not None]
    report(rows, summary, args.out, raw_ms, tokens_per_ckpt)


def set_constant(item: str) -> None:
    """Set one constant of backend/capability.py from NAME=VALUE (a Python
    literal), for re-scoring the saved runs with another setting."""
    import ast

    from backend import capability

    name, sep, value = item.partition("=")
    if not sep or not name.isupper() or not hasattr(capability, name):
        raise SystemExit(f"--set {item!r}: expected NAME=VALUE with NAME an upper-case constant of "
                         f"backend/capability.py")
    try:
        setattr(capability, name, ast.literal_eval(value))
    except (ValueError, SyntaxError):
        raise SystemExit(f"--set {item!r}: the value {value!r} is not a Python literal") from None


@functools.cache
def _chance(skill: str, seed: int) -> float | None:
    from backend import vocab
    from backend.data.skills import SKILLS
    from backend.evaluation.tasks import constant_answer_rate

    base = skill.removesuffix(vocab.HOLDOUT_SUFFIX)
    if base not in SKILLS:
        return None
    return constant_answer_rate(base, "holdout" if vocab.is_holdout(skill) else "steer", seed)


def chance_levels(measurements: list[dict], seed: int) -> dict[str, float]:
    """Each measured synthetic skill's chance level, as a run of that seed
    stores it in its skills table (backend.client.skill_rows), for saved
    runs, which predate the table's column."""
    levels = {s: _chance(s, seed) for s in {m["skill"] for m in measurements if m["skill"] is not None}}
    return {s: c for s, c in levels.items() if c is not None}


def relatent(rows: list[dict], measurements: list[dict], tokens_per_ckpt: float, seed: int) -> list[dict]:
    """The rows with latent estimates recomputed by the current estimator,
    with the chance levels a run of `seed` stores."""
    from backend.capability import estimate

    est = estimate(measurements, tokens_per_ckpt, chance=chance_levels(measurements, seed))
    by = {(e["step"], s): e for s, es in est.items() for e in es}
    return [{**r, "latent": by[(r["step"], r["skill"])]["score"], "lo": by[(r["step"], r["skill"])]["lo"],
             "hi": by[(r["step"], r["skill"])]["hi"]} for r in rows]


def saved_path(preset: str, seed: int) -> Path:
    """Where the saved run of a preset and seed lives (docs/)."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    if preset == "demo":
        return docs / ("fidelity.json" if seed == 0 else f"fidelity-seed{seed}.json")
    return docs / f"fidelity-{preset.removeprefix('demo-')}-seed{seed}.json"


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion p over n items."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def covered(r: dict, n_truth: int) -> bool:
    """The estimate minus the truth within Z95 root-sum-squares of the
    estimate's sd (its interval's half-width on the truth's side / Z95) and
    the truth's sd toward the estimate (its Wilson half-width / Z95)."""
    t_lo, t_hi = wilson(r["truth"], n_truth)
    if r["latent"] >= r["truth"]:
        half, t_half = r["latent"] - r["lo"], t_hi - r["truth"]
    else:
        half, t_half = r["hi"] - r["latent"], r["truth"] - t_lo
    return abs(r["latent"] - r["truth"]) <= math.hypot(half, t_half)


def figures(rows: list[dict], n_truth: int) -> dict:
    """MAE of raw, raw3 and latent against the truth, their ratios and the
    interval coverage (three ways) over rows."""
    def mae(key, subset=rows):
        return sum(abs(r[key] - r["truth"]) for r in subset) / len(subset)

    moving = [r for r in rows if r["truth"] > 0.02]
    f = {"pairs": len(rows), "pairs_truth_above_0.02": len(moving),
         "mae_raw": mae("raw"), "mae_raw3": mae("raw3"), "mae_latent": mae("latent"),
         "mae_raw3_where_truth_above_0.02": mae("raw3", moving) if moving else None,
         "mae_latent_where_truth_above_0.02": mae("latent", moving) if moving else None,
         "coverage": sum(covered(r, n_truth) for r in rows) / len(rows),
         "coverage_strict": sum(r["lo"] <= r["truth"] <= r["hi"] for r in rows) / len(rows),
         "coverage_overlap": sum(wilson(r["truth"], n_truth)[0] <= r["hi"]
                                 and r["lo"] <= wilson(r["truth"], n_truth)[1] for r in rows) / len(rows)}
    f["ratio_latent_raw3"] = f["mae_latent"] / f["mae_raw3"]
    f["ratio_latent_raw"] = f["mae_latent"] / f["mae_raw"]
    return f


def report(rows, summary, out, raw_ms=None, tokens_per_ckpt=None) -> None:
    """Print the figures of one run; with out, save the run (rows, summary,
    its measurements) so it can be re-scored offline."""
    summary.update(figures(rows, summary["truth_items"]))
    print(f"{len(rows)} (checkpoint, skill) pairs ({summary['pairs_truth_above_0.02']} with truth > 0.02)")
    print(f"MAE raw (template 0, n={summary['items_per_template']}): {summary['mae_raw']:.4f}")
    print(f"MAE raw mean of 3 templates:            {summary['mae_raw3']:.4f}")
    print(f"MAE latent (causal):                    {summary['mae_latent']:.4f}")
    print(f"interval coverage of the truth: {summary['coverage']:.1%} allowing for the truth's sampling error "
          f"({summary['truth_items']} items); strictly inside: {summary['coverage_strict']:.1%}; "
          f"intervals overlapping: {summary['coverage_overlap']:.1%}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        # the run's own measurements too, so the estimator can be re-run offline
        Path(out).write_text(json.dumps({"summary": summary, "rows": rows, "tokens_per_checkpoint":
                                         tokens_per_ckpt, "measurements": raw_ms}, indent=1))
    print(f"ratio latent/raw3 MAE: {summary['ratio_latent_raw3']:.3f}; latent/raw: {summary['ratio_latent_raw']:.3f}")


# pieces of the estimator, each taken out by overriding backend.capability's constants
ABLATIONS = {
    "estimator": {},
    "without the at-chance segments": {"CHANCE_PRIOR": 0.0},
    "without the dead segments": {"DEAD_PRIOR": 0.0},
    "without the trend segments": {"TREND_SHARE": 0.0},
    "hazard 0.05 (is 0.1)": {"HAZARD": 0.05},
    "hazard 0.2 (as before)": {"HAZARD": 0.2},
    "Kalman filters averaged (before the segments)": {"SEGMENTS": False},
}


def pooled_rows(preset: str, seed_list: list[int]) -> tuple[dict[int, list[dict]], int]:
    """The saved runs' rows re-scored by the current estimator, per seed, and
    the truth's item count."""
    per, n_truth = {}, None
    for seed in seed_list:
        path = saved_path(preset, seed)
        if not path.exists():
            raise SystemExit(f"--seeds: no saved run for seed {seed} of preset {preset} at {path}; make it with "
                             f"python bench/fidelity.py --preset {preset} --seed {seed} --out {path}")
        saved = json.loads(path.read_text())
        per[seed] = relatent(saved["rows"], saved["measurements"], saved["tokens_per_checkpoint"], seed)
        n_truth = saved["summary"]["truth_items"]
    return per, n_truth


def ablate(preset: str, seed_list: list[int], out: str | None) -> None:
    """Pooled figures over the seeds with each piece of the estimator taken out."""
    from backend import capability

    keep = {k: getattr(capability, k) for over in ABLATIONS.values() for k in over}
    print(f"| {preset}, seeds {','.join(map(str, seed_list))} pooled | MAE latent | / raw3 | / raw | coverage |")
    print("|---|---|---|---|---|")
    table = {}
    for name, over in ABLATIONS.items():
        for k, v in {**keep, **over}.items():
            setattr(capability, k, v)
        per, n_truth = pooled_rows(preset, seed_list)
        f = table[name] = figures([r for rows in per.values() for r in rows], n_truth)
        print(f"| {name} | {f['mae_latent']:.4f} | {f['ratio_latent_raw3']:.3f} | {f['ratio_latent_raw']:.3f} "
              f"| {f['coverage']:.1%} |")
    for k, v in keep.items():
        setattr(capability, k, v)
    if out:
        Path(out).write_text(json.dumps({"preset": preset, "seeds": seed_list, "ablations": table}, indent=1))


def loss_bound(preset: str, seed_list: list[int], out: str | None) -> None:
    """Per saved run and skill: MAE against the truth of raw3 and of the
    answer loss mapped to a score by logit(truth) ~ a + b log(answer_nll),
    fitted over the run's checkpoints after step 0 to the truth itself (not
    causal, not available to an estimator: the most a calibrated loss could
    give as a look of its own)."""
    import numpy as np

    table = {}
    for seed in seed_list:
        saved = json.loads(saved_path(preset, seed).read_text())
        loss = {(m["step"], m["skill"]): m["value"] for m in saved["measurements"] if m["metric"] == "answer_nll"}
        if not loss:
            print(f"seed {seed}: no answer_nll saved")
            continue
        for s in saved["summary"]["skills"]:
            rs = [r for r in saved["rows"] if r["skill"] == s and r["step"] > 0]
            t = np.clip([r["truth"] for r in rs], 0.003, 0.997)
            A = np.c_[np.ones(len(rs)), np.log([loss[(r["step"], s)] for r in rs])]
            coef = np.linalg.lstsq(A, np.log(t / (1 - t)), rcond=None)[0]
            fit = 1 / (1 + np.exp(-(A @ coef)))
            truth = np.array([r["truth"] for r in rs])
            table[f"{seed}/{s}"] = {"mae_raw3": float(np.mean(np.abs([r["raw3"] for r in rs] - truth))),
                                    "mae_loss_fitted_to_truth": float(np.mean(np.abs(fit - truth)))}
            f = table[f"{seed}/{s}"]
            print(f"| {seed} | {s} | {f['mae_raw3']:.4f} | {f['mae_loss_fitted_to_truth']:.4f} |")
    better = sum(f["mae_loss_fitted_to_truth"] < f["mae_raw3"] for f in table.values())
    print(f"the loss fitted to the truth beats raw3 on {better} of {len(table)} (seed, skill)")
    if out:
        Path(out).write_text(json.dumps({"preset": preset, "seeds": seed_list, "loss_bound": table}, indent=1))


def seeds(preset: str, seed_list: list[int], out: str | None) -> None:
    """Re-score the saved runs of preset for each seed with the current
    estimator; print a table per seed and pooled over all pairs."""
    rows, n_truth = pooled_rows(preset, seed_list)
    per = {str(seed): figures(rs, n_truth) for seed, rs in rows.items()}
    per["pooled"] = figures([r for rs in rows.values() for r in rs], n_truth)
    lines = [("pairs (truth > 0.02)", lambda f: f"{f['pairs']} ({f['pairs_truth_above_0.02']})"),
             ("MAE raw, template 0", lambda f: f"{f['mae_raw']:.4f}"),
             ("MAE raw3, mean of 3 templates", lambda f: f"{f['mae_raw3']:.4f}"),
             ("MAE latent (causal)", lambda f: f"{f['mae_latent']:.4f}"),
             ("ratio latent / raw3 (goal <= 0.8)", lambda f: f"{f['ratio_latent_raw3']:.3f}"),
             ("ratio latent / raw (goal <= 0.5)", lambda f: f"{f['ratio_latent_raw']:.3f}"),
             ("coverage (goal 90-97%)", lambda f: f"{f['coverage']:.1%}"),
             ("coverage, strictly inside", lambda f: f"{f['coverage_strict']:.1%}"),
             ("coverage, intervals overlap", lambda f: f"{f['coverage_overlap']:.1%}")]
    cols = [f"seed {k}" if k != "pooled" else "pooled" for k in per]
    print(f"| {preset} | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, fmt in lines:
        print(f"| {name} | " + " | ".join(fmt(f) for f in per.values()) + " |")
    by_skill = skill_shares([r for rs in rows.values() for r in rs])
    print(f"\n| {preset}, pooled, per skill | share of the pooled MAE latent | MAE latent / raw3 |\n|---|---|---|")
    for s, f in by_skill.items():
        ratio = "-" if f["ratio_latent_raw3"] is None else f"{f['ratio_latent_raw3']:.2f}"
        print(f"| {s} | {f['share_of_mae_latent']:.0%} | {ratio} |")
    if out:
        Path(out).write_text(json.dumps({"preset": preset, "seeds": seed_list, "figures": per,
                                         "by_skill": by_skill}, indent=1))


def skill_shares(rows: list[dict]) -> dict[str, dict]:
    """Per skill: its share of the summed latent error over rows, and its
    latent error against raw3's (where the estimator gains and where not)."""
    total = sum(abs(r["latent"] - r["truth"]) for r in rows) or 1.0
    out = {}
    for s in dict.fromkeys(r["skill"] for r in rows):
        lat = sum(abs(r["latent"] - r["truth"]) for r in rows if r["skill"] == s)
        raw3 = sum(abs(r["raw3"] - r["truth"]) for r in rows if r["skill"] == s)
        out[s] = {"share_of_mae_latent": lat / total, "ratio_latent_raw3": lat / raw3 if raw3 else None}
    return out


if __name__ == "__main__":
    main()
