"""Figures for the dashboard and the HTML report: pure functions
DataFrame -> plotly Figure.

They take the frames of backend/frames.py (see its units and columns) and
never touch the store, so they are tested without Streamlit and reused by
the report.

Figures are built from plain trace dicts added with `add_traces`, not with
plotly.express: with 50 skills x 1,000 checkpoints px takes seconds, this
takes milliseconds. Long series are thinned to `max_points` checkpoints
(evenly spaced, the last one always kept) before any trace is made.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from backend.explain import AT_CHANCE, LEARNING
from backend.frames import ema, thin
from backend.vocab import Z95, is_holdout, is_score

MAX_POINTS = 300  # checkpoints per trajectory trace, after thinning
MAX_COLUMNS = 200  # checkpoints (columns) in a heatmap, after thinning

# 24 distinguishable colours (plotly's Dark24), cycled for more skills/runs
PALETTE = [
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86",
    "#EB663B", "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE",
    "#862A16", "#A777F1", "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038",
]
X_LABELS = {"tokens_seen": "tokens seen", "step": "step"}


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# A light template as a plain dict: a named one ("plotly_white") is deep-copied
# into every figure, which costs more than building the traces.
# Steps, tokens, weights, losses and scores are never negative, so no axis
# reaches below 0 (plotly pads a lone point to -1..1); margins grow to fit
# long tick labels ("copy_holdout (held-out)").
_TEMPLATE = dict(layout=dict(
    paper_bgcolor="white", plot_bgcolor="white", colorway=PALETTE,
    xaxis=dict(gridcolor="#ebebeb", linecolor="#bbb", zeroline=False, ticks="outside", tickcolor="#bbb",
               rangemode="nonnegative", automargin=True),
    yaxis=dict(gridcolor="#ebebeb", linecolor="#bbb", zeroline=False, rangemode="nonnegative", automargin=True),
))


def _figure(title: str | None, **layout) -> go.Figure:
    base = dict(template=_TEMPLATE, margin=dict(l=50, r=20, t=50 if title else 20, b=40),
                hovermode="closest")
    if title:
        base["title"] = dict(text=title, x=0, xanchor="left")
    base.update(layout)
    return go.Figure(layout=base)


def _series_traces(x, y, lo, hi, *, name: str, color: str, dash: str = "solid", group: str | None = None,
                   band: bool = True, width: float = 2, showlegend: bool = True) -> list[dict]:
    """A line (and its 95% band lo..hi as one closed polygon) as trace dicts."""
    x, y = np.asarray(x), np.asarray(y, dtype="float64")
    lo, hi = np.asarray(lo, dtype="float64"), np.asarray(hi, dtype="float64")
    traces = []
    if band and len(x) and np.nan_to_num(hi - lo).any():
        traces.append(dict(type="scatter", x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                           mode="lines", fill="toself", fillcolor=_rgba(color, 0.13), line=dict(width=0),
                           hoverinfo="skip", showlegend=False, legendgroup=group or name, name=name))
    traces.append(dict(type="scatter", x=x, y=y, customdata=np.stack([lo, hi], axis=-1),
                       mode="lines+markers" if len(x) < 40 else "lines",
                       name=name, legendgroup=group or name, showlegend=showlegend,
                       line=dict(color=color, dash=dash, width=width), marker=dict(size=5),
                       hovertemplate=f"{name}<br>%{{x:,}}: %{{y:.3f}} "
                                     f"[%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]<extra></extra>"))
    return traces


def _empty(title: str, message: str) -> go.Figure:
    fig = _figure(title)
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#888"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


# -- figures -------------------------------------------------------------------


def _all_scores(frame: pd.DataFrame) -> bool:
    """Whether every row of a frame is a [0, 1] score: by its `metric` name
    where the frame has one (vocab.is_score), and its values and band in
    [0, 1]."""
    if "metric" in frame.columns and not frame["metric"].map(is_score).all():
        return False
    top = max((frame[c].max() for c in ("value", "hi") if c in frame.columns and not frame.empty), default=1.0)
    bottom = min((frame[c].min() for c in ("value", "lo") if c in frame.columns and not frame.empty), default=0.0)
    return (pd.isna(top) or top <= 1.0) and (pd.isna(bottom) or bottom >= 0.0)


def _score_axis(frame: pd.DataFrame, title: str = "score") -> dict:
    """The y axis of scores: [0, 1] while every row is a score; else free in
    the metric's own units, from 0 unless a value or band is negative
    (mcc)."""
    if _all_scores(frame):
        return dict(title=title, range=[-0.02, 1.02])
    low = min((frame[c].min() for c in ("value", "lo") if c in frame.columns and not frame.empty), default=0.0)
    return dict(title=f"{title} (own metric)", rangemode="normal" if low < 0 else "nonnegative")


def facet_figure(facets: pd.DataFrame, latent: dict | None = None, title: str | None = None) -> go.Figure:
    """The facets of one skill at one checkpoint as points with 95% error
    bars, beside the latent estimate and its interval (a shaded band) when
    given ({score, lo, hi})."""
    title = title if title is not None else "Spread across facets"
    if facets.empty:
        return _empty(title, "no measurement of this skill at this checkpoint")
    fig = _figure(title, yaxis=_score_axis(facets), xaxis_title="facet",
                  height=340, showlegend=False)
    if latent is not None:
        fig.add_hrect(y0=latent["lo"], y1=latent["hi"], fillcolor=_rgba(PALETTE[0], 0.15), line_width=0)
        fig.add_hline(y=latent["score"], line_color=PALETTE[0], line_dash="dash",
                      annotation_text=f"latent {latent['score']:.2f} [{latent['lo']:.2f}, {latent['hi']:.2f}]")
    colors = [PALETTE[1] if m == "exact_match" else PALETTE[6] for m in facets["metric"]]
    fig.add_traces([dict(
        type="scatter", mode="markers", x=facets["facet"], y=facets["value"], marker=dict(size=10, color=colors),
        error_y=dict(type="data", symmetric=False, array=facets["hi"] - facets["value"],
                     arrayminus=facets["value"] - facets["lo"]),
        customdata=np.stack([facets["n"].fillna(0), facets["task"]], axis=-1),
        hovertemplate="%{x}<br>%{y:.3f} (n=%{customdata[0]:.0f}, %{customdata[1]})<extra></extra>")])
    return fig


def _pick(frame: pd.DataFrame, bases: list[str] | None, holdout: bool) -> pd.DataFrame:
    df = frame if bases is None else frame[frame["base"].isin(bases)]
    return df if holdout else df[df["kind"] == "steer"]


def trajectory_figure(scores: pd.DataFrame, *, x: str = "tokens_seen", bases: list[str] | None = None,
                      holdout: bool = True, band: bool = True, raw: pd.DataFrame | None = None,
                      chance: dict[str, float] | None = None,
                      max_points: int = MAX_POINTS, title: str | None = "Capability per skill") -> go.Figure:
    """Per-skill score against `x` (tokens_seen or step), each with its 95%
    band. Colour = skill; solid = steer, dotted = held-out variant. With
    `raw` (skill_scores) the measured means are drawn as dots over the
    lines (when `scores` is the latent estimate). With `chance` (skill ->
    chance level, frames.chance_levels) each shown steer skill's chance is a
    thin dashed line in its colour: a score on it is a guess, not a skill."""
    df = _pick(scores, bases, holdout)
    if df.empty:
        return _empty(title, "no measurements yet")
    df = thin(df, max_points)
    fig = _figure(title, xaxis_title=X_LABELS.get(x, x), yaxis=_score_axis(df))
    order = list(dict.fromkeys(bases or sorted(df["base"].unique())))
    colors = {b: _color(i) for i, b in enumerate(order)}
    traces = []
    # legend order: the chosen skills' order, each steer skill above its held-out variant
    rank = {b: i for i, b in enumerate(order)}
    df = df.assign(_r=df["base"].map(rank), _k=(df["kind"] != "steer").astype(int))
    for (_, _, skill, kind, base), s in df.sort_values(["_r", "_k", "step"]).groupby(
            ["_r", "_k", "skill", "kind", "base"], sort=False):
        label = skill if kind == "steer" else f"{skill} (held-out)"
        traces += _series_traces(s[x], s["value"], s["lo"], s["hi"], name=label, color=colors.get(base, "#888"),
                                 dash="solid" if kind == "steer" else "dot", band=band)
    if raw is not None and not raw.empty:
        r = thin(_pick(raw, bases, holdout), max_points)
        for (skill, kind, base), s in r.sort_values("step").groupby(["skill", "kind", "base"], sort=False):
            label = skill if kind == "steer" else f"{skill} (held-out)"
            traces.append(dict(type="scatter", x=s[x], y=s["value"], mode="markers", name=f"{label} measured",
                               legendgroup=label, showlegend=False,
                               marker=dict(size=4, color=colors.get(base, "#888"),
                                           symbol="circle" if kind == "steer" else "circle-open"),
                               hovertemplate=f"{label} measured<br>%{{x:,}}: %{{y:.3f}}<extra></extra>"))
    x0, x1 = df[x].min(), df[x].max()
    for skill, base in df[df["kind"] == "steer"][["skill", "base"]].drop_duplicates().itertuples(index=False):
        level = (chance or {}).get(skill)
        if level is None:
            continue
        traces.append(dict(type="scatter", x=[x0, x1], y=[level, level], mode="lines", name=f"{skill} chance",
                           legendgroup=skill, showlegend=False, line=dict(color=colors.get(base, "#888"), width=1,
                                                                           dash="dash"),
                           hovertemplate=f"{skill}: chance {level:.3f}<extra></extra>"))
    fig.add_traces(traces)
    return fig


def headline_figure(scores: pd.DataFrame, *, x: str = "tokens_seen", max_points: int = MAX_POINTS,
                    title: str | None = "Mean capability: steer vs held-out skills") -> go.Figure:
    """Mean score over steer skills and over held-out skills (with the
    band of the mean), over thin grey lines of each steer skill. Only
    skills scored by a [0, 1] score (vocab.is_score) are averaged: a mean
    of accuracies and a perplexity or BLEU means nothing."""
    if scores.empty:
        return _empty(title, "no measurements yet")
    if "metric" in scores.columns:
        scores = scores[scores["metric"].map(is_score).astype(bool)]
        if scores.empty:
            return _empty(title, "no skill is scored by a [0, 1] score")
    df = thin(scores, max_points)
    fig = _figure(title, xaxis_title=X_LABELS.get(x, x), yaxis=_score_axis(df))
    traces = []
    steer = df[df["kind"] == "steer"].sort_values("step")
    for i, (skill, s) in enumerate(steer.groupby("skill", sort=True)):
        traces.append(dict(type="scatter", x=s[x], y=s["value"], mode="lines", name=skill,
                           line=dict(color="rgba(120,120,120,0.35)", width=1), legendgroup="skills",
                           showlegend=i == 0,
                           hovertemplate=f"{skill}<br>%{{x:,}}: %{{y:.3f}}<extra></extra>"))
    if traces:
        traces[0]["name"] = "each steer skill"  # the one legend entry of the grey lines
    for kind, color, label in (("steer", "#2E91E5", "mean of steer skills"),
                               ("holdout", "#E15F99", "mean of held-out skills")):
        k = df[df["kind"] == kind]
        if k.empty:
            continue
        # the mean's sd from each skill's: sd_i = (hi - lo) / (2 Z95), sd = sqrt(sum sd_i^2) / k
        m = k.assign(sd2=((k["hi"] - k["lo"]) / (2 * Z95)) ** 2).groupby("step").agg(
            x=(x, "max"), value=("value", "mean"), sd2=("sd2", "sum"), k=("value", "size"))
        half = Z95 * np.sqrt(m["sd2"]) / m["k"]
        traces += _series_traces(m["x"], m["value"], (m["value"] - half).clip(0, 1), (m["value"] + half).clip(0, 1),
                                 name=label, color=color, dash="solid" if kind == "steer" else "dot", width=3)
    fig.add_traces(traces)
    return fig


def heatmap_figure(scores: pd.DataFrame, *, x: str = "step", max_columns: int = MAX_COLUMNS,
                   title: str | None = "Skill x checkpoint") -> go.Figure:
    """Exact match of every skill (rows; each steer skill above its held-out
    variant) at every checkpoint (columns, thinned to `max_columns`)."""
    if scores.empty:
        return _empty(title, "no measurements yet")
    df = thin(scores, max_columns)
    z = df.pivot_table(index="skill", columns="step", values="value", aggfunc="mean")
    order = (df[["skill", "base", "kind"]].drop_duplicates()
             .assign(k=lambda d: (d["kind"] != "steer").astype(int))
             .sort_values(["base", "k"])["skill"].tolist())
    z = z.reindex(order)
    xs = z.columns.to_numpy()
    if x != "step":
        xs = df.groupby("step")[x].max().reindex(z.columns).to_numpy()
    labels = [s if not is_holdout(s) else f"{s} (held-out)" for s in z.index]
    fig = _figure(title, xaxis_title=X_LABELS.get(x, x),
                  height=max(260, 60 + 18 * len(labels)), yaxis=dict(autorange="reversed"))
    fig.add_traces([dict(type="heatmap", z=z.to_numpy(), x=xs, y=labels, zmin=0, zmax=1,
                         colorscale="Viridis", colorbar=dict(title="exact match"),
                         hovertemplate="%{y}<br>%{x:,}: %{z:.3f}<extra></extra>")])
    return fig


def domain_loss_figure(losses: pd.DataFrame, *, x: str = "tokens_seen", max_points: int = MAX_POINTS,
                       log_y: bool = False, height: int | None = None,
                       title: str | None = "Held-out loss per domain") -> go.Figure:
    """Per-domain held-out loss (nats per token) against `x` (log y axis
    with `log_y`)."""
    if losses.empty:
        return _empty(title, "no measurements yet")
    df = thin(losses, max_points).sort_values("step")
    fig = _figure(title, xaxis_title=X_LABELS.get(x, x), height=height,
                  yaxis=dict(title="loss (nats/token)", type="log" if log_y else "linear"))
    traces = []
    for i, (d, s) in enumerate(df.groupby("domain", sort=True)):
        traces.append(dict(type="scatter", x=s[x], y=s["value"], mode="lines", name=d,
                           line=dict(color=_color(i), width=2),
                           hovertemplate=f"{d}<br>%{{x:,}}: %{{y:.3f}}<extra></extra>"))
    fig.add_traces(traces)
    return fig


def mixture_figure(history: pd.DataFrame, *, end_step: int | None = None,
                   title: str | None = "Mixture over steps") -> go.Figure:
    """The mixture as a stacked area over steps (a step function: each
    segment holds until the next), with a marker at each change saying
    where it came from and who decided it."""
    if history.empty:
        return _empty(title, "no mixture yet")
    segs = history.drop_duplicates("from_step").sort_values("from_step")
    starts = segs["from_step"].tolist()
    last = end_step if end_step is not None and end_step > starts[-1] else None
    xs = starts + ([last] if last is not None else [])
    fig = _figure(title, xaxis_title="step", yaxis=dict(title="weight", range=[0, 1.1]),
                  hovermode="x unified")
    traces = []
    domains = list(dict.fromkeys(history["domain"]))
    wide = history.pivot(index="from_step", columns="domain", values="weight").reindex(starts)
    for i, d in enumerate(domains):
        ys = wide[d].tolist()
        ys = ys + ([ys[-1]] if last is not None else [])
        traces.append(dict(type="scatter", x=xs, y=ys, mode="lines", name=d, stackgroup="mixture",
                           line=dict(shape="hv", width=0.5, color=_color(i)),
                           hovertemplate=f"{d}: %{{y:.3f}}<extra></extra>"))
    changes = segs.iloc[1:] if len(segs) > 1 else segs.iloc[:0]
    if len(changes):
        def label(r):
            what = r.source if pd.isna(r.proposal_id) else f"{r.source} #{int(r.proposal_id)}"
            who = f" by {r.decided_by}" if isinstance(r.decided_by, str) and r.decided_by else ""
            return f"step {r.from_step}: {what}{who}"

        text = [label(r) for r in changes.itertuples()]
        # a rug of ticks: readable for a few changes and for one at every checkpoint
        marker = (dict(symbol="triangle-down", size=11, color="#222") if len(changes) <= 40 else
                  dict(symbol="line-ns", size=10, line=dict(width=1, color="rgba(34,34,34,0.5)")))
        traces.append(dict(type="scatter", x=changes["from_step"], y=[1.04] * len(changes), mode="markers",
                           name="mixture changed", marker=marker, text=text,
                           hovertemplate="%{text}<extra></extra>"))
    fig.add_traces(traces)
    return fig


def weights_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Horizontal bars of the current weights, next to the proposed ones
    when the table has a `proposed` column (see `weights_table`)."""
    fig = _figure(title, xaxis=dict(title="weight", range=[0, 1]), barmode="group",
                  height=max(220, 60 + 32 * len(table)), yaxis=dict(autorange="reversed"))
    traces = [dict(type="bar", orientation="h", y=table["domain"], x=table["current"], name="current",
                   marker=dict(color="#9AA5B1"), hovertemplate="%{y}: %{x:.3f}<extra>current</extra>")]
    if "proposed" in table.columns:
        traces.append(dict(type="bar", orientation="h", y=table["domain"], x=table["proposed"], name="proposed",
                           marker=dict(color="#2E91E5"), hovertemplate="%{y}: %{x:.3f}<extra>proposed</extra>"))
    fig.add_traces(traces)
    return fig


def compare_figure(scores: pd.DataFrame, skill: str, *, x: str = "tokens_seen",
                   max_points: int = MAX_POINTS, title: str | None = None) -> go.Figure:
    """One skill's trajectory in several runs (column `run`) on one axis."""
    title = title if title is not None else skill
    df = scores[scores["skill"] == skill]
    if df.empty:
        return _empty(title, f"no measurements of {skill}")
    fig = _figure(title, xaxis_title=X_LABELS.get(x, x), yaxis=_score_axis(df))
    traces = []
    for i, (run, s) in enumerate(df.groupby("run", sort=False)):
        s = thin(s, max_points).sort_values("step")
        traces += _series_traces(s[x], s["value"], s["lo"], s["hi"], name=str(run), color=_color(i))
    fig.add_traces(traces)
    return fig


def reach_figure(reach: pd.DataFrame, threshold: float, title: str | None = None) -> go.Figure:
    """Tokens each run needed to reach `threshold` per skill (grouped bars;
    a run that never reached it has no bar)."""
    title = title if title is not None else f"Tokens to reach exact match {threshold:.2f}"
    if reach.empty or reach["tokens_seen"].isna().all():
        return _empty(title, f"no skill reached {threshold:.2f} yet")
    fig = _figure(title, barmode="group", yaxis_title="tokens seen", xaxis_title="skill")
    traces = []
    for i, (run, s) in enumerate(reach.groupby("run", sort=False)):
        traces.append(dict(type="bar", x=s["skill"], y=s["tokens_seen"], name=str(run),
                           marker=dict(color=_color(i)),
                           hovertemplate=f"{run}<br>%{{x}}: %{{y:,}} tokens<extra></extra>"))
    fig.add_traces(traces)
    return fig


AFFINITY_COLUMNS = ["step", "skill", "domain", "mean", "lo", "hi", "prior", "source"]
"""The affinity frame: one row per checkpoint, steer skill and domain (the
store's `affinity` rows): how much the domain feeds the skill, its 95%
interval lo..hi, the declared prior, and where it came from (prior,
learned, pinned)."""


def _skill_domain_grid(frame: pd.DataFrame, step: int | None):
    """The rows of a (step, skill, domain, ...) frame at one checkpoint
    (default: the last) as a grid: (step, skills, domains, grid) where
    grid(column, fill) is that column as a skills x domains list of lists,
    `fill` where a cell has no row."""
    at = frame["step"].max() if step is None else step
    df = frame[frame["step"] == at]
    skills = list(dict.fromkeys(df["skill"]))
    domains = list(dict.fromkeys(df["domain"]))
    cell = df.set_index(["skill", "domain"])

    def grid(column: str, fill):
        return [[cell[column].get((s, d), fill) for d in domains] for s in skills]

    return at, skills, domains, grid


def affinity_figure(affinity: pd.DataFrame, *, step: int | None = None,
                    title: str | None = "Which domain feeds which skill") -> go.Figure:
    """The affinity matrix at one checkpoint (default: the last) as a
    heatmap: skills as rows, domains as columns, each cell showing its mean
    and [lo, hi]; the hover adds the prior and the source."""
    if affinity.empty:
        return _empty(title, "no affinity estimate yet")
    at, skills, domains, grid = _skill_domain_grid(affinity, step)
    text = [[f"{m:.2f}<br>[{a:.2f}, {b:.2f}]" + ("<br>pinned" if src == "pinned" else "")
             for m, a, b, src in zip(*row)]
            for row in zip(grid("mean", np.nan), grid("lo", np.nan), grid("hi", np.nan), grid("source", ""))]
    custom = np.stack([np.array(grid(c, np.nan), dtype="float64") for c in ("lo", "hi", "prior")], axis=-1)
    source = np.array(grid("source", ""), dtype=object)[..., None]
    fig = _figure(f"{title} · step {at:,}" if title else None, xaxis_title="domain",
                  height=max(260, 80 + 48 * len(skills)), yaxis=dict(autorange="reversed", title="skill"))
    fig.add_traces([dict(type="heatmap", z=grid("mean", np.nan), x=domains, y=skills, text=text,
                         texttemplate="%{text}", colorscale="Blues", colorbar=dict(title="affinity"),
                         customdata=np.concatenate([custom.astype(object), source], axis=-1),
                         hovertemplate="%{x} feeds %{y}<br>mean %{z:.3f} [%{customdata[0]:.3f}, "
                                       "%{customdata[1]:.3f}]<br>prior %{customdata[2]:.2f} · "
                                       "%{customdata[3]}<extra></extra>")])
    return fig


ALIGNMENT_COLUMNS = ["step", "skill", "domain", "value", "stderr"]
"""The alignment frame: one row per checkpoint, steer skill and domain (the
store's `alignment` rows): the centred cosine of the domain's gradient
with the skill's answer gradient (backend.evaluation.alignment) and its
standard error."""


def alignment_figure(alignment: pd.DataFrame, *, step: int | None = None,
                     title: str | None = "Gradient alignment") -> go.Figure:
    """The gradient alignment at one checkpoint (default: the last) as a
    heatmap on a diverging scale (-1 blue .. +1 red): skills as rows,
    domains as columns, each cell its centred cosine and standard error."""
    if alignment.empty:
        return _empty(title, "no gradient alignment measured yet")
    at, skills, domains, grid = _skill_domain_grid(alignment, step)
    z, se = grid("value", np.nan), grid("stderr", np.nan)
    text = [[f"{v:+.2f}<br>± {e:.2f}" for v, e in zip(zr, er)] for zr, er in zip(z, se)]
    fig = _figure(f"{title} · step {at:,}" if title else None, xaxis_title="domain",
                  height=max(260, 80 + 48 * len(skills)), yaxis=dict(autorange="reversed", title="skill"))
    fig.add_traces([dict(type="heatmap", z=z, x=domains, y=skills, text=text, texttemplate="%{text}",
                         colorscale="RdBu", reversescale=True, zmin=-1, zmax=1, colorbar=dict(title="cosine"),
                         hovertemplate="%{x} vs %{y}<br>cosine %{z:.3f}<extra></extra>")])
    return fig


def affinity_history_figure(affinity: pd.DataFrame, links: list[tuple[str, str]],
                            title: str | None = "Affinity over checkpoints") -> go.Figure:
    """One line per (skill, domain) link over the checkpoints, with its
    95% band lo..hi."""
    if affinity.empty or not links:
        return _empty(title, "no link chosen" if not affinity.empty else "no affinity estimate yet")
    fig = _figure(title, xaxis_title="step", yaxis_title="affinity", height=340)
    for i, (s, d) in enumerate(links):
        df = affinity[(affinity["skill"] == s) & (affinity["domain"] == d)].sort_values("step")
        fig.add_traces(_series_traces(df["step"], df["mean"], df["lo"], df["hi"], name=f"{d} -> {s}",
                                      color=_color(i)))
    return fig


# -- training curves -------------------------------------------------------------

CURVES = {  # train_log column -> (title, y axis title)
    "loss": ("Training loss", "loss (nats/token)"),
    "lr": ("Learning rate", "learning rate"),
    "grad_norm": ("Gradient norm (before clipping)", "global L2 norm"),
    "tokens_per_s": ("Throughput", "training tokens / s"),
}


def curve_figure(curves: pd.DataFrame, column: str, *, x: str = "step", smoothing: float = 0.0,
                 log_y: bool = False, max_points: int = 2 * MAX_POINTS, height: int | None = 300,
                 title: str | None = None) -> go.Figure:
    """One training curve (frames.train_curves column `column`) against `x`,
    as TensorBoard draws it: the logged values faint, their EMA
    (`smoothing` in [0, 1), frames.ema) solid; a log y axis with `log_y`.
    The EMA runs over every row before the series is thinned to
    `max_points` rows."""
    name, axis = CURVES.get(column, (column, column))
    title = name if title is None else title
    df = curves.dropna(subset=[column]) if column in curves.columns else curves.iloc[:0]
    if df.empty:
        return _empty(title, "nothing logged yet")
    df = df.assign(smooth=ema(df[column], smoothing))
    df = thin(df, max_points)
    fig = _figure(title, xaxis_title=X_LABELS.get(x, x), height=height, showlegend=False,
                  yaxis=dict(title=axis, type="log" if log_y else "linear",
                             exponentformat="power" if column == "lr" else "B"))
    fmt = ".2e" if column == "lr" else ".4g"
    traces = []
    if smoothing > 0:
        traces.append(dict(type="scatter", x=df[x], y=df[column], mode="lines", name=f"{name} (logged)",
                           line=dict(color=_rgba(PALETTE[0], 0.3), width=1),
                           hovertemplate=f"%{{x:,}}: %{{y:{fmt}}} logged<extra></extra>"))
    traces.append(dict(type="scatter", x=df[x], y=df["smooth"], mode="lines", name=name,
                       line=dict(color=PALETTE[0], width=2),
                       hovertemplate=f"%{{x:,}}: %{{y:{fmt}}}<extra>{name}</extra>"))
    fig.add_traces(traces)
    return fig


def tokens_per_domain_figure(tokens: pd.DataFrame, title: str | None = "Tokens per domain") -> go.Figure:
    """Training tokens each domain has been given (frames.tokens_per_domain)
    as stacked areas over steps."""
    if tokens.empty:
        return _empty(title, "no mixture yet")
    fig = _figure(title, xaxis_title="step", yaxis_title="training tokens", height=300, hovermode="x unified")
    fig.add_traces([dict(type="scatter", x=s["step"], y=s["tokens"], mode="lines", name=d, stackgroup="tokens",
                         line=dict(width=0.5, color=_color(i)), hovertemplate=f"{d}: %{{y:,.0f}}<extra></extra>")
                    for i, (d, s) in enumerate(tokens.sort_values("step").groupby("domain", sort=False))])
    return fig


# -- capabilities at a glance ------------------------------------------------------

BADGE_COLORS = {LEARNING: "#1CA71C", AT_CHANCE: "#888888"}


def skill_panels_figure(scores: pd.DataFrame, *, x: str = "tokens_seen", bases: list[str] | None = None,
                        holdout: bool = True, band: bool = True, chance: dict[str, float] | None = None,
                        badges: dict[str, str] | None = None, cols: int = 4, max_points: int = MAX_POINTS,
                        title: str | None = None) -> go.Figure:
    """Small multiples: one panel per skill (base), its steer line solid
    and its held-out variant dotted, each with its 95% band, the chance
    level dashed grey, and the panel's title carrying the badge (`badges`:
    steer skill -> explain.badge; green when learning). Every panel shares
    the score range [0, 1]; axes are laid out by hand (no make_subplots:
    50 panels in milliseconds)."""
    df = _pick(scores, bases, holdout)
    if df.empty:
        return _empty(title or "Capability per skill", "no measurements yet")
    df = thin(df, max_points)
    order = list(dict.fromkeys(bases or sorted(df["base"].unique())))
    by_base = dict(tuple(df.sort_values("step").groupby("base", sort=False)))
    order = [b for b in order if b in by_base]
    cols = min(cols, len(order))
    rows = -(-len(order) // cols)
    gap_x, gap_y = 0.04, 0.5 / max(rows, 1) * 0.35  # fractions of the figure between panels
    panel_h = 170  # px per row of panels
    width = (1 - gap_x * (cols - 1)) / cols
    height = (1 - gap_y * (rows - 1)) / rows
    layout: dict = {}
    annotations, traces = [], []
    top = max((df[c].max() for c in ("value", "hi")), default=1.0)
    yrange = [-0.02, 1.02] if pd.isna(top) or top <= 1.0 else [0, float(top) * 1.05]
    x1 = df[x].max()
    for i, base in enumerate(order):
        r, c = divmod(i, cols)
        n = "" if i == 0 else str(i + 1)
        x0d = c * (width + gap_x)
        y1d = 1 - r * (height + gap_y)
        layout[f"xaxis{n}"] = dict(domain=[x0d, x0d + width], anchor=f"y{n}", rangemode="nonnegative",
                                   gridcolor="#ebebeb", showticklabels=r == rows - 1 or i + cols >= len(order),
                                   range=[0, x1] if x1 else None, tickfont=dict(size=9))
        layout[f"yaxis{n}"] = dict(domain=[y1d - height, y1d], anchor=f"x{n}", range=yrange, gridcolor="#ebebeb",
                                   showticklabels=c == 0, tickfont=dict(size=9))
        s = by_base[base]
        steer = s[s["kind"] == "steer"]
        name = steer["skill"].iloc[0] if len(steer) else base
        state = (badges or {}).get(name)
        label = f"<b>{base}</b>" + (f" · <span style='color:{BADGE_COLORS.get(state, '#FB0D0D')}'>{state}</span>"
                                    if state else "")
        annotations.append(dict(text=label, x=x0d, y=y1d, xref="paper", yref="paper", xanchor="left",
                                yanchor="bottom", showarrow=False, font=dict(size=12)))
        for (skill, kind), k in s.groupby(["skill", "kind"], sort=False):
            held = kind != "steer"
            for t in _series_traces(k[x], k["value"], k["lo"], k["hi"], color=PALETTE[1] if held else PALETTE[0],
                                    name=f"{skill} (held-out)" if held else skill, dash="dot" if held else "solid",
                                    band=band, showlegend=False):
                traces.append({**t, "xaxis": f"x{n}", "yaxis": f"y{n}"})
        level = (chance or {}).get(name)
        if level is not None:
            traces.append(dict(type="scatter", x=[0, x1], y=[level, level], mode="lines", name=f"{name} chance",
                               showlegend=False, line=dict(color="#555", width=1, dash="dash"),
                               xaxis=f"x{n}", yaxis=f"y{n}", hovertemplate=f"chance {level:.3f}<extra></extra>"))
    fig = _figure(title, height=rows * panel_h + 60, showlegend=False, annotations=annotations,
                  margin=dict(l=40, r=10, t=40 if title else 24, b=30), **layout)
    fig.add_traces(traces)
    return fig


def forecast_check_figure(errors: pd.DataFrame, title: str | None = "Past forecasts against outcomes") -> go.Figure:
    """Each scored forecast (store.forecast_errors rows: skill, forecast,
    actual, step) as a point, forecast on x and the latent score measured
    one checkpoint later on y; on the grey diagonal the forecast was right."""
    if errors.empty:
        return _empty(title, "no forecast scored yet")
    errors = thin(errors, MAX_POINTS)  # the newest checkpoints' forecasts stay
    fig = _figure(title, height=300, xaxis=dict(title="forecast", range=[0, 1.02]),
                  yaxis=dict(title="outcome (latent score)", range=[0, 1.02]), showlegend=False)
    traces = [dict(type="scatter", x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dash"),
                   hoverinfo="skip", name="right")]
    for i, (skill, s) in enumerate(errors.groupby("skill", sort=True)):
        traces.append(dict(type="scatter", x=s["forecast"], y=s["actual"], mode="markers", name=skill,
                           marker=dict(size=7, color=_color(i)), customdata=s["step"],
                           hovertemplate=f"{skill} at step %{{customdata}}<br>forecast %{{x:.3f}}, "
                                         f"outcome %{{y:.3f}}<extra></extra>"))
    fig.add_traces(traces)
    return fig
