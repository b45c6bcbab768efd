"""The store's rows as tidy pandas DataFrames, for the dashboard, the HTML
report and the benchmarks.

Each frame function reads the store only through its public methods (or
takes rows already read) and returns a DataFrame with fixed columns, empty
frames included; backend/charts.py turns them into figures.

Units: `step` is optimizer steps, `tokens_seen` is training tokens; scores
are each skill's own metric (`metric`: exact match for the synthetic
skills), in [0, 1] where the name makes it a score (vocab.is_score), else in
the metric's units (a perplexity, BLEU 0-100, mcc). Score frames come in two
kinds with the same columns: the raw measurements (`skill_scores`: the mean
over a checkpoint's prompt templates, band value +- Z95 stderr, `_with_band`)
and the latent capability estimate (`capability_scores`, from
backend/capability.py: a Kalman filter over checkpoints, band its 95%
interval). `lo` / `hi` hold the band either way, so every figure takes
either.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from backend.vocab import Z95, base_skill, in_range, is_holdout, is_loss, is_score

PRIMARY_METRIC = "exact_match"
SCORE_COLUMNS = ["skill", "base", "kind", "metric", "step", "tokens_seen", "value", "stderr", "n", "lo", "hi"]
SLOPE_COLUMNS = ["slope", "slope_lo", "slope_hi", "slope_per_token", "raw_mean"]

def skill_scores(store, run_id: int) -> pd.DataFrame:
    """One row per (skill, checkpoint): the skill's exact match with its
    stderr and item count. Columns: SCORE_COLUMNS.

    A skill measured by several tasks (or facets) gets their mean, with
    stderr sqrt(sum se^2) / k (independent item sets) and n summed."""
    rows = store.measurements(run_id, kind="steer") + store.measurements(run_id, kind="holdout")
    skills = {s["name"]: s for s in store.skills(run_id)}
    return scores_frame(rows, skills)


def _empty_scores(extra: list[str] = ()) -> pd.DataFrame:
    types = ["str"] * 4 + ["int64"] * 2 + ["float64"] * (len(SCORE_COLUMNS) - 6 + len(extra))
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(SCORE_COLUMNS + list(extra), types)})


def _with_band(df: pd.DataFrame) -> pd.DataFrame:
    """lo / hi = value -+ Z95 stderr, by each row's `metric` name: clipped to
    [0, 1] for a score (vocab.is_score) whose value lies in it (in_range),
    at 0 below for a loss or perplexity, as computed otherwise (bleu, ter,
    mcc: their own units, mcc below 0; a score reported outside [0, 1] is
    drawn where it was reported, not clipped onto [0, 1])."""
    se = df["stderr"].fillna(0.0)
    lo, hi = df["value"] - Z95 * se, df["value"] + Z95 * se
    score = pd.Series([is_score(m) and in_range(m, v) for m, v in zip(df["metric"], df["value"])], index=df.index,
                      dtype=bool)
    loss = df["metric"].map(is_loss).astype(bool)
    return df.assign(lo=lo.where(~score, lo.clip(0, 1)).where(~loss, lo.clip(lower=0)),
                     hi=hi.where(~score, hi.clip(0, 1)))


def _own_metric(skill: pd.Series, skills: dict[str, dict]) -> pd.Series:
    """Each skill's own metric (the skills table's; exact match for the
    synthetic skills and stores without one)."""
    return skill.map({s: skills.get(s, {}).get("metric") or PRIMARY_METRIC for s in skill.unique()})


def _bases(skill: pd.Series, skills: dict[str, dict]) -> pd.Series:
    base = {s: skills[s]["base"] if s in skills else base_skill(s) for s in skill.unique()}
    return skill.map(base)


def chance_levels(store, run_id: int) -> dict[str, float]:
    """Skill -> its chance level (a uniform guess, the best constant answer,
    or what the task declares), for the skills that have one."""
    return {s["name"]: s["chance"] for s in store.skills(run_id) if s.get("chance") is not None}


def skill_badges(scores: pd.DataFrame, chance: dict[str, float]) -> dict[str, str]:
    """Steer skill -> its badge at its newest checkpoint (explain.badge:
    learning, at chance, below chance) from a score frame's band."""
    from backend.explain import badge

    steer = scores[scores["kind"] == "steer"]
    if steer.empty:
        return {}
    last = steer.sort_values("step").groupby("skill").tail(1)
    return {r.skill: badge(r.lo, r.hi, chance.get(r.skill)) for r in last.itertuples()}


def capability_scores(store, run_id: int) -> pd.DataFrame:
    """The latent capability per (skill, checkpoint) that the worker
    estimates (store.capability): value = the estimate, lo / hi its 95%
    interval, stderr = (hi - lo) / (2 Z95), and the learning slope columns
    (SLOPE_COLUMNS). Empty for runs from before the estimator."""
    rows = store.capability(run_id)
    if not rows:
        return _empty_scores(SLOPE_COLUMNS)
    skills = {s["name"]: s for s in store.skills(run_id)}
    df = pd.DataFrame.from_records(rows, columns=["skill", "step", "tokens_seen", "score", "lo", "hi"]
                                   + SLOPE_COLUMNS)
    df = df.rename(columns={"score": "value"})
    df["base"] = _bases(df["skill"], skills)
    kinds = {s: skills[s]["kind"] if s in skills else ("holdout" if is_holdout(s) else "steer")
             for s in df["skill"].unique()}
    df["kind"] = df["skill"].map(kinds)
    df["metric"] = _own_metric(df["skill"], skills)
    df["stderr"] = (df["hi"] - df["lo"]) / (2 * Z95)
    df["n"] = np.nan
    return df[SCORE_COLUMNS + SLOPE_COLUMNS].sort_values(["skill", "step"]).reset_index(drop=True)


def scores_frame(rows: list[dict], skills: dict[str, dict] | None = None) -> pd.DataFrame:
    """`skill_scores` from measurement rows (and skill rows by name)."""
    if not rows:
        return _empty_scores()
    df = pd.DataFrame.from_records(rows, columns=["skill", "kind", "step", "tokens_seen", "metric",
                                                  "value", "stderr", "n"])
    df = df[df["kind"].isin(["steer", "holdout"]) & df["skill"].notna()]
    df = df[df["metric"] == _own_metric(df["skill"], skills or {})]
    df = df.assign(stderr=df["stderr"].astype("float64"), n=df["n"].astype("float64"))
    if df.duplicated(["skill", "step"]).any():
        g = df.assign(se2=df["stderr"] ** 2).groupby(["skill", "step"], sort=True)
        out = g.agg(kind=("kind", "first"), metric=("metric", "first"), tokens_seen=("tokens_seen", "max"),
                    value=("value", "mean"), se2=("se2", "sum"), k=("value", "size"), n=("n", "sum")).reset_index()
        out["stderr"] = np.sqrt(out["se2"]) / out["k"]
    else:  # one task per skill (the usual case): nothing to average
        out = df.sort_values(["skill", "step"])
    out["base"] = _bases(out["skill"], skills or {})
    return _with_band(out)[SCORE_COLUMNS].reset_index(drop=True)


FACET_COLUMNS = ["facet", "task", "metric", "prompt_variant", "decoding", "scorer", "value", "stderr", "n",
                 "lo", "hi"]


def facet_frame(rows: list[dict], step: int, metric: str | None = None) -> pd.DataFrame:
    """One skill's measurements at one checkpoint, one row per facet (prompt
    variant, decoding, scorer) with its 95% band: the spread a single score
    hides. The scores in [0, 1] (exact match, accuracies), or the rows of
    `metric` when the skill is scored by a loss or perplexity; the other
    rows stay in the table."""
    keep = (lambda m: m == metric) if metric is not None and not is_score(metric) else is_score
    df = pd.DataFrame.from_records([r for r in rows if r["step"] == step and keep(r["metric"])],
                                   columns=FACET_COLUMNS[1:9])
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in FACET_COLUMNS[6:] else "str")
                             for c in FACET_COLUMNS})
    df = df.assign(stderr=df["stderr"].astype("float64"), n=df["n"].astype("float64"))
    df["facet"] = (df["prompt_variant"].fillna("") + " · " + df["decoding"].fillna("") + " · "
                   + df["metric"].replace({"exact_match": "exact match", "ll_acc": "ll accuracy"}))
    return _with_band(df)[FACET_COLUMNS].sort_values(["metric", "facet"], ascending=[False, True]) \
        .reset_index(drop=True)



def domain_losses(store, run_id: int) -> pd.DataFrame:
    """Held-out loss per domain and checkpoint (nats per token).
    Columns: domain, step, tokens_seen, value, stderr."""
    rows = store.measurements(run_id, kind="domain_loss")
    cols = ["domain", "step", "tokens_seen", "value", "stderr"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame.from_records(rows, columns=cols)
    return df.groupby(["domain", "step"], as_index=False).agg(
        tokens_seen=("tokens_seen", "max"), value=("value", "mean"), stderr=("stderr", "mean"))


TRAIN_COLUMNS = ["step", "tokens_seen", "loss", "lr", "grad_norm", "tokens_per_s"]


def train_curves(store, run_id: int) -> pd.DataFrame:
    """The run's training curves (store.train_log): one row per logged
    window of steps (backend.client.StepLog), by step. Columns:
    TRAIN_COLUMNS (loss in nats/token, tokens_per_s in training tokens per
    wall second)."""
    rows = store.train_log(run_id)
    return pd.DataFrame.from_records(rows, columns=TRAIN_COLUMNS).astype(
        {"step": "int64", "tokens_seen": "int64", "loss": "float64", "lr": "float64", "grad_norm": "float64",
         "tokens_per_s": "float64"})


def ema(values: pd.Series, weight: float) -> pd.Series:
    """TensorBoard's smoothing: an exponential moving average with
    `weight` in [0, 1) on the previous value (0: none), debiased so the
    first points are not pulled towards 0; missing values are skipped."""
    if weight <= 0 or values.empty:
        return values
    v = values.to_numpy(dtype="float64")
    out = np.full_like(v, np.nan)
    acc, norm = 0.0, 0.0
    for i, y in enumerate(v):
        if np.isnan(y):
            continue
        acc, norm = acc * weight + (1 - weight) * y, norm * weight + (1 - weight)
        out[i] = acc / norm
    return pd.Series(out, index=values.index)


def tokens_per_domain(history: pd.DataFrame, tokens_per_step: int, end_step: int) -> pd.DataFrame:
    """Training tokens each domain has been given by the mixture, summed at
    every segment boundary up to `end_step`: weight x steps x tokens per
    step (what the mixture asks for; the sampler draws close to it).
    `history` is mixture_history. Columns: step, domain, tokens."""
    cols = ["step", "domain", "tokens"]
    if history.empty:
        return pd.DataFrame(columns=cols)
    segs = history.assign(to_step=history["to_step"].fillna(end_step).clip(upper=end_step))
    segs = segs[segs["from_step"] < segs["to_step"]]
    segs = segs.assign(tokens=(segs["to_step"] - segs["from_step"]) * tokens_per_step * segs["weight"])
    out = segs.sort_values("to_step").assign(tokens=lambda d: d.groupby("domain")["tokens"].cumsum())
    start = history[history["from_step"] == history["from_step"].min()][["domain"]].assign(step=0, tokens=0.0)
    return pd.concat([start, out.rename(columns={"to_step": "step"})[cols]], ignore_index=True)[cols]


def mixture_history(schedule: list[dict], end_step: int | None = None) -> pd.DataFrame:
    """Schedule segments (store.schedule rows) in long form: one row per
    (segment, domain). Columns: from_step, to_step, tokens_at, source,
    proposal_id, decided_by, domain, weight."""
    cols = ["from_step", "to_step", "tokens_at", "source", "proposal_id", "decided_by", "domain", "weight"]
    out = []
    for i, seg in enumerate(schedule):
        nxt = schedule[i + 1]["from_step"] if i + 1 < len(schedule) else end_step
        for d, w in seg["weights"].items():
            out.append((seg["from_step"], nxt, seg["tokens_at"], seg["source"], seg.get("proposal_id"),
                        seg.get("decided_by"), d, w))
    return pd.DataFrame(out, columns=cols)


def domain_usage(store, run_id: int) -> pd.DataFrame:
    """Per domain, up to the last checkpoint that counted its data: the
    share of training tokens the schedule requested (its segments' weights
    over the steps each was in force), the share actually sampled, the
    tokens trained and the epochs over its training tokens (NaN: an endless
    stream). Columns: domain, requested, sampled, tokens, epochs; empty
    before the first such checkpoint."""
    cols = ["domain", "requested", "sampled", "tokens", "epochs"]
    cks = [c for c in store.checkpoints(run_id) if c.get("domain_usage")]
    schedule = store.schedule(run_id)
    if not cks or not schedule:
        return pd.DataFrame(columns=cols)
    last = cks[-1]
    steps = [c["step"] for c in store.checkpoints(run_id) if c["step"] <= last["step"]]
    requested: dict[str, float] = {}
    for a, b in zip(steps, steps[1:]):  # each stretch trained the segment in force at its start
        seg = [s for s in schedule if s["from_step"] <= a][-1]
        for d, w in seg["weights"].items():
            requested[d] = requested.get(d, 0.0) + w * (b - a)
    total_req = sum(requested.values())
    usage = last["domain_usage"]
    total = sum(u["tokens"] for u in usage.values())
    return pd.DataFrame([(d, requested.get(d, 0.0) / total_req if total_req else math.nan,
                          u["tokens"] / total if total else math.nan, u["tokens"],
                          math.nan if u["epochs"] is None else u["epochs"]) for d, u in usage.items()], columns=cols)


def weights_table(current: dict[str, float], proposed: dict[str, float] | None = None,
                  rationale: dict[str, str] | None = None) -> pd.DataFrame:
    """Current (and proposed) weight per domain, the change, the reason."""
    df = pd.DataFrame({"domain": list(current), "current": [float(v) for v in current.values()]})
    if proposed is not None:
        df["proposed"] = [float(proposed.get(d, math.nan)) for d in current]
        df["change"] = df["proposed"] - df["current"]
    if rationale is not None:
        df["reason"] = [rationale.get(d, "") for d in current]
    return df


FORECAST_COLUMNS = ["skill", "score now", "expected next", "lo", "hi", "interval", "basis"]


def forecast_intervals(forecast: dict[str, dict], errors: list[dict], min_errors: int = 3) -> pd.DataFrame:
    """A proposal's forecast with a 95% interval per skill: expected +- Z95
    x sd, where sd is the forecast's own ("sd" in its entry) or else the
    root mean square of the run's past forecast errors (`errors`:
    store.forecast_errors rows) of that skill when it has `min_errors`, else
    of every skill. The `interval` column says which; a run with no scored
    forecast yet gives no interval (NaN). Columns: FORECAST_COLUMNS."""
    errs = pd.DataFrame.from_records(errors, columns=["skill", "error"])
    pooled = float(np.sqrt((errs["error"] ** 2).mean())) if len(errs) else math.nan
    per = errs.groupby("skill")["error"].agg(lambda e: np.sqrt((e ** 2).mean()) if len(e) >= min_errors
                                             else math.nan)
    rows = []
    for s, f in forecast.items():
        exp = f.get("expected")
        if f.get("sd") is not None:
            sd, how = float(f["sd"]), "the forecast's own sd"
        elif not math.isnan(per.get(s, math.nan)):
            sd, how = float(per[s]), f"RMS of {int((errs['skill'] == s).sum())} past errors of {s}"
        elif len(errs):
            sd, how = pooled, f"RMS of {len(errs)} past errors, all skills"
        else:
            sd, how = math.nan, "no forecast scored yet"
        lo = hi = math.nan
        if exp is not None and not math.isnan(sd):
            lo, hi = max(0.0, exp - Z95 * sd), min(1.0, exp + Z95 * sd)
        rows.append([s, f.get("score"), exp, lo, hi, how, f.get("basis", "")])
    return pd.DataFrame(rows, columns=FORECAST_COLUMNS)


def decisions_table(proposals: list[dict]) -> pd.DataFrame:
    """Every decided proposal (newest first): who, when, what, and where it
    stands (waiting for the next checkpoint, or applied at step S)."""
    rows = [(p["id"], p["step"], p["strategy"], p["decision"] or "-", p["status"], p["decided_by"],
             p["decided_at"], p["decision_reason"] or "", p["applied_step"])
            for p in reversed(proposals) if p["decision"] is not None or p["status"] == "superseded"]
    cols = ["proposal", "from step", "strategy", "decision", "status", "decided by", "decided at",
            "reason", "applied at step"]
    df = pd.DataFrame(rows, columns=cols)
    df["proposal"] = df["proposal"].astype("Int64")
    df["decided at"] = pd.to_datetime(df["decided at"].astype("float64"), unit="s").dt.floor("s")
    df["applied at step"] = df["applied at step"].astype("Int64")
    return df


def tokens_to_reach(scores: pd.DataFrame, threshold: float, by: str = "run") -> pd.DataFrame:
    """Per (by, skill): the first checkpoint whose score reaches `threshold`
    (tokens_seen and step; NaN where it never does)."""
    keys = [by, "skill"] if by in scores.columns else ["skill"]
    cols = keys + ["tokens_seen", "step"]
    if scores.empty:
        return pd.DataFrame(columns=cols)
    df = scores.sort_values("step")
    hit = df[df["value"] >= threshold].groupby(keys, as_index=False).first()[cols]
    allk = df[keys].drop_duplicates()
    return allk.merge(hit, on=keys, how="left").sort_values(keys).reset_index(drop=True)


# -- transforms ---------------------------------------------------------------


def smooth(scores: pd.DataFrame, window: int) -> pd.DataFrame:
    """Rolling mean over `window` checkpoints per skill (and run). The
    stderr becomes that of a mean of independent estimates:
    sqrt(mean se^2 / count), the band drawn by the metric (`_with_band`)."""
    if window <= 1 or scores.empty:
        return scores
    keys = [k for k in ("run", "skill") if k in scores.columns]
    df = scores.sort_values(keys + ["step"])
    g = df.groupby(keys, sort=False)
    value = g["value"].rolling(window, min_periods=1).mean().reset_index(level=list(range(len(keys))), drop=True)
    se2 = (df["stderr"] ** 2).groupby([df[k] for k in keys], sort=False)
    se2m = se2.rolling(window, min_periods=1).mean().reset_index(level=list(range(len(keys))), drop=True)
    cnt = g["value"].rolling(window, min_periods=1).count().reset_index(level=list(range(len(keys))), drop=True)
    return _with_band(df.assign(value=value, stderr=np.sqrt(se2m / cnt)))


def thin(frame: pd.DataFrame, max_points: int, column: str = "step") -> pd.DataFrame:
    """Keep at most `max_points` distinct values of `column`, evenly spaced,
    always the first and the last (so the newest checkpoint is shown)."""
    steps = np.unique(frame[column].to_numpy())
    if len(steps) <= max_points:
        return frame
    keep = steps[np.unique(np.linspace(0, len(steps) - 1, max_points).round().astype(int))]
    return frame[frame[column].isin(keep)]



def data_version(store, run_id: int) -> tuple:
    """Changes whenever a checkpoint is added, evaluated or through its
    boundary: the cache key of a run's measurement and estimate frames."""
    cks = store.checkpoints(run_id)
    # the latent estimate is written between `evaluated` and `boundary_done`
    return (len(cks), cks[-1]["step"] if cks else -1, sum(c["evaluated"] for c in cks),
            sum(c["boundary_done"] for c in cks))
