"""Training: the curves a TensorBoard or W&B user looks for first:
training loss, learning rate, gradient norm and throughput as the worker
logs them (one row per window of steps, backend.client.StepLog), with EMA
smoothing and a log scale; held-out loss per domain and the tokens each
domain has been given beside them."""

from __future__ import annotations

import streamlit as st

from backend import charts, frames, vocab
from pages._common import (
    curves,
    get_store,
    kept,
    losses,
    refresh_every,
    require_run,
    stop_refresh_when_done,
)

store = get_store()
run = require_run(store)
run_id = run["id"]

st.title("Training")
c1, c2, c3 = st.columns([3, 1.6, 1.2], vertical_alignment="bottom")
smoothing = c1.slider("Smoothing", 0.0, 0.99, step=0.01, **kept("train_smoothing", 0.6),
                      help="TensorBoard's EMA: each point is this share of the previous smoothed value plus the "
                           "rest of the logged one (0: the logged values as they are). The logged values stay "
                           "as a faint line.")
x = c2.radio("x axis", ["step", "tokens_seen"], horizontal=True, format_func=charts.X_LABELS.get,
             **kept("train_x", "step"))
log_y = c3.toggle("log scale", **kept("train_log_y", False), help="Logarithmic y axes (loss, gradient norm)")


@st.fragment(run_every=refresh_every(run))
def live() -> None:
    now = store.run(run_id)
    stop_refresh_when_done(run, now)
    df = curves(store, run_id)
    if df.empty:
        st.info("No training step logged yet: the curves appear within seconds of the first steps.")
    else:
        last = df.iloc[-1]
        st.caption(f"{len(df):,} logged rows up to step {int(last['step']):,}; each row sums up a window of steps "
                   "(mean loss and gradient norm, the window's last learning rate, tokens per wall second "
                   "while training).")
    left, right = st.columns(2)
    left.plotly_chart(charts.curve_figure(df, "loss", x=x, smoothing=smoothing, log_y=log_y), key="train_loss")
    right.plotly_chart(charts.domain_loss_figure(losses(store, run_id), x=x, log_y=log_y, height=300),
                       key="train_domain_loss")
    left, right = st.columns(2)
    left.plotly_chart(charts.curve_figure(df, "lr", x=x), key="train_lr")
    right.plotly_chart(charts.curve_figure(df, "grad_norm", x=x, smoothing=smoothing, log_y=log_y),
                       key="train_grad_norm")
    left, right = st.columns(2)
    left.plotly_chart(charts.curve_figure(df, "tokens_per_s", x=x, smoothing=smoothing), key="train_throughput")
    tokens_per_step = vocab.tokens_per_step(now["config"]["train"]["batch_size"],
                                            now["config"]["data"]["context_length"])
    history = frames.mixture_history(store.schedule(run_id), end_step=now["step"])
    right.plotly_chart(charts.tokens_per_domain_figure(frames.tokens_per_domain(history, tokens_per_step,
                                                                                now["step"])),
                       key="train_tokens_per_domain")


live()
