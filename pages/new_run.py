"""New run: a preset or an uploaded config, a policy, a seed, data folders;
started as a background worker."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from backend import config as config_mod
from backend.config import ConfigError
from backend.controllers import STRATEGIES
from pages._common import check_untrusted, flash, get_store, md, select_run_later, show_flash, start_run

ss = st.session_state
store = get_store()
st.title("New run")
show_flash()


def _load_upload(upload) -> config_mod.RunConfig:
    """The uploaded file through backend.config.from_text: the command
    line's parser, input limits, presets and error messages (the file's
    suffix picks JSON or TOML; the uploader allows only those), its paths
    confined to the data roots before anything looks whether they exist."""
    fmt = Path(upload.name).suffix.lower().lstrip(".")
    return config_mod.from_text(upload.getvalue(), fmt, name=upload.name, untrusted=True)


def _folder_domains(text: str, taken: list[str]) -> list[dict]:
    """One folder domain per non-empty line, named after the folder."""
    out, names = [], set(taken)
    for line in text.splitlines():
        path = line.strip()
        if not path:
            continue
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).name).strip("_") or "folder"
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.add(name)
        out.append({"name": name, "source": "folder", "path": path})
    return out


# -- where the config comes from ----------------------------------------------------
source = st.radio("Start from", ["preset", "file"], key="new_source", horizontal=True,
                  format_func={"preset": "a preset", "file": "a config file (.json / .toml)"}.get)
if source == "preset":
    names = list(config_mod.PRESETS)
    name = st.selectbox("Preset", names, index=names.index("demo"), key="new_preset",
                        help="demo: the synthetic suite on CPU in minutes; tiny: seconds (tests); "
                             "gpu-small: a ~125M model for one GPU")
    base = config_mod.preset(name)
else:
    upload = st.file_uploader("Config file", type=["json", "toml"], key="new_config_file",
                              help="Any RunConfig fields; `preset = \"demo\"` starts from a preset")
    if upload is None:
        st.info("Upload a config file, or start from a preset.")
        st.stop()
    try:
        base = _load_upload(upload)
    except ConfigError as e:
        st.error(f"{md(upload.name)} refused: {md(e)}")
        st.stop()

# -- choices ---------------------------------------------------------------------------
c1, c2, c3 = st.columns(3)
policy = c1.radio("Policy", ["human", "auto"], key="new_policy", horizontal=True,
                  help="human: proposals wait for a decision; auto: every proposal is approved")
seed = c2.number_input("Seed", min_value=0, value=None, step=1, key="new_seed", placeholder=f"{base.seed} (config)")
steps = c3.number_input("Steps", min_value=1, value=None, step=100, key="new_steps",
                        placeholder=f"{base.train.steps} (config)")
c4, c5 = st.columns(2)
run_name = c4.text_input("Name", key="new_name", placeholder=f"{base.name} (config)")
strategies = list(STRATEGIES)
strategy = c5.selectbox("Controller strategy", strategies, key="new_strategy",
                        index=strategies.index(base.controller.strategy) if base.controller.strategy in strategies
                        else 0)
folders = st.text_area("Data folders (one per line; each becomes a domain of .txt / .jsonl / .parquet files)",
                       key="new_folders", placeholder="/data/my_corpus")

data = base.to_dict()
data["policy"] = policy
if strategy != base.controller.strategy:  # options belong to the strategy: another starts from its defaults
    data["controller"]["options"] = {}
data["controller"]["strategy"] = strategy
if seed is not None:
    data["seed"] = int(seed)
if steps is not None:
    data["train"]["steps"] = int(steps)
if run_name.strip():
    data["name"] = run_name.strip()
extra = _folder_domains(folders, [d["name"] for d in data["data"]["domains"]])
data["data"]["domains"] += extra
try:
    cfg = config_mod.from_dict(data, untrusted=True)
    check_untrusted(cfg)  # everything here came from the browser: paths and sizes within the limits
except ConfigError as e:
    cfg = None
    st.error(f"This configuration is refused: {md(e)}")
else:
    with st.expander("Resolved configuration"):
        st.json(cfg.to_dict(), expanded=1)

if st.button("Start run", key="new_start", type="primary", icon=":material/play_arrow:", disabled=cfg is None):
    try:
        run_id = start_run(store, cfg)  # refuses what this machine cannot run (a GPU, a data file, a task's data)
    except ConfigError as e:
        st.error(f"This configuration cannot run here: {md(e)}. No run was started.")
        st.stop()
    select_run_later(run_id)
    flash(f"Run #{run_id} ({md(cfg.name)}, policy {cfg.policy}) started in the background.")
    st.rerun()
