"""Fixtures of the dashboard tests (test_app, test_browser, test_report,
test_frames, test_charts).

The dashboard is tested against a database from one real short run
(`python -m backend run --preset tiny --policy human`), made once per
session; each test that changes it gets its own copy.

Test modules import these fixtures by name. The run itself is memoised at
module level, so it happens once even when several modules import the
session fixture (pytest makes one fixture definition per importing module).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, cli_json

from backend.frames import SCORE_COLUMNS
from backend.store import Store
from backend.vocab import skill_name

_RUNS: dict[str, tuple[Path, int]] = {}


@pytest.fixture(scope="session")
def human_run(tmp_path_factory) -> tuple[Path, int]:
    """(db path, run id) of a real tiny run (policy human, real training and
    lm-eval) that a person stopped right after its checkpoint at step 20
    proposed: 3 checkpoints measured, the proposal of step 20 waits for a
    decision (a finished run has none waiting: they expire). Read-only:
    copy it (`dashboard_db`) to change it."""
    if "human" not in _RUNS:
        from backend.config import preset
        from backend.loop import ClosedLoop, Stopped
        from backend.store import Store

        db = tmp_path_factory.mktemp("human") / "cl.db"
        store = Store(db)
        run_id = store.create_run(preset("tiny").replace(policy="human").to_dict())

        def stop_after_proposing(phase: str, step: int) -> None:
            if (phase, step) == ("propose", 20):
                raise Stopped()  # what the stop command does at a poll

        assert ClosedLoop(store, run_id, progress=False, on_phase=stop_after_proposing).run() == "stopped"
        store.close()
        _RUNS["human"] = (db, run_id)
    return _RUNS["human"]


def copy_db(src: Path, dst: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        if Path(str(src) + suffix).exists():
            shutil.copy(str(src) + suffix, str(dst) + suffix)
    return dst


@pytest.fixture
def dashboard_db(human_run, tmp_path, monkeypatch) -> tuple[Path, int]:
    """A private copy of the human run's database, set as CLOSED_LOOP_DB."""
    db, run_id = human_run
    dst = copy_db(db, tmp_path / "cl.db")
    monkeypatch.setenv("CLOSED_LOOP_DB", str(dst))
    return dst, run_id


@pytest.fixture
def navigation_only(monkeypatch):
    """Run pages the way a warm server does: through app.py's st.navigation.

    AppTest puts Streamlit back into its v1 multipage mode (a `pages/`
    folder) before every run, so every switched page would take the detour
    a server's first visit takes (pages/_common.leave_pages_folder_mode:
    rerun through app.py), and a plain st.button click is lost in that
    rerun. Tests start where a server is after its first run: the same
    helper leaves v1 mode as each run's PagesManager is made."""
    from streamlit.runtime.pages_manager import PagesManager

    from pages._common import leave_pages_folder_mode

    init = PagesManager.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        leave_pages_folder_mode()

    monkeypatch.setattr(PagesManager, "__init__", patched)


@pytest.fixture
def spawned(monkeypatch) -> list[tuple[str, int]]:
    """Record worker starts instead of starting processes: the pages'
    effect on the store (the new run) is what these tests check; the worker
    is tested by the backend's own tests."""
    from backend import worker

    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(worker, "spawn", lambda db_path, run_id: calls.append((db_path, run_id)) or 0)
    return calls


APP = str(ROOT / "app.py")


# -- frames and figures: small hand-made data ------------------------------------


def scores_df(skills=("copy", "add2"), steps=range(0, 50, 10), holdout=True,
              tokens_per_step=100) -> pd.DataFrame:
    """A score frame (SCORE_COLUMNS) of skills rising 0.01 per step, each
    base 0.1 above the previous, held-out twins 0.05 below their steer skill."""
    rows = []
    for i, base in enumerate(skills):
        for kind in (("steer", "holdout") if holdout else ("steer",)):
            name = skill_name(base, kind)
            for s in steps:
                v = min(1.0, s / 100 + 0.1 * i + (0 if kind == "steer" else -0.05))
                rows.append({"skill": name, "base": base, "kind": kind, "step": s,
                             "tokens_seen": s * tokens_per_step, "value": max(0.0, v), "stderr": 0.05, "n": 50.0,
                             "metric": "exact_match"})
    df = pd.DataFrame(rows)
    return df.assign(lo=(df["value"] - 1.96 * df["stderr"]).clip(0, 1),
                     hi=(df["value"] + 1.96 * df["stderr"]).clip(0, 1))[SCORE_COLUMNS]


@pytest.fixture
def scored_run(tmp_path) -> tuple:
    """(Store, run id) of a hand-made run: two checkpoints of a steer skill
    measured by two tasks (and a loglik row), its held-out twin, a domain
    loss, an initial mixture and latent estimates."""
    s = Store(tmp_path / "cl.db")
    cfg = {"name": "t", "policy": "human", "train": {"steps": 20, "checkpoint_every": 10}}
    run_id = s.create_run(cfg)
    s.set_skills(run_id, [
        {"name": "copy", "base": "copy", "kind": "steer", "domains": ["strings"], "tasks": ["a", "b"]},
        {"name": "copy_holdout", "base": "copy", "kind": "holdout", "domains": ["strings"], "tasks": ["c"]},
    ])
    rows = []
    for step in (0, 10):
        tok = step * 64
        rows += [
            {"step": step, "tokens_seen": tok, "skill": "copy", "kind": "steer", "task": "a",
             "metric": "exact_match", "value": 0.2 + step / 100, "stderr": 0.03, "n": 40},
            {"step": step, "tokens_seen": tok, "skill": "copy", "kind": "steer", "task": "b",
             "metric": "exact_match", "value": 0.4 + step / 100, "stderr": 0.04, "n": 60},
            {"step": step, "tokens_seen": tok, "skill": "copy", "kind": "steer", "task": "a",
             "metric": "loglik", "value": -3.0, "stderr": 0.1, "n": 40},
            {"step": step, "tokens_seen": tok, "skill": "copy_holdout", "kind": "holdout", "task": "c",
             "metric": "exact_match", "value": 0.1, "stderr": 0.02, "n": 50},
            {"step": step, "tokens_seen": tok, "domain": "strings", "kind": "domain_loss",
             "task": "heldout_loss/strings", "metric": "loss", "value": 4.0 - step / 10, "stderr": 0.01, "n": 8},
        ]
    s.add_measurements(run_id, rows)
    s.add_segment(run_id, from_step=0, tokens_at=0, weights={"strings": 0.5, "noise": 0.5}, source="initial")
    s.set_capability(run_id, [
        {"step": step, "skill": skill, "tokens_seen": step * 64, "score": 0.3 + step / 100, "lo": 0.2, "hi": 0.6,
         "slope": 0.05, "slope_lo": 0.0, "slope_hi": 0.1, "slope_per_token": 0.05 / 640, "raw_mean": 0.3}
        for step in (0, 10) for skill in ("copy", "copy_holdout")])
    return s, run_id


def facet_rows(step=10) -> list[dict]:
    """One skill's measurement rows at steps 0 and `step`: three exact-match
    templates, a loglikelihood accuracy and an answer loss (not a score)."""
    rows = []
    for variant, metric, value, se in [("template0", "exact_match", 0.4, 0.07), ("template2", "exact_match", 0.6, 0.07),
                                       ("template3", "exact_match", 0.5, 0.07), ("template0", "ll_acc", 0.9, 0.04),
                                       ("template0", "answer_nll", 1.7, 0.1)]:
        for s in (0, step):
            rows.append({"step": s, "task": f"copy_{variant}_{metric}", "metric": metric, "value": value if s else 0.0,
                         "stderr": se, "n": 50, "prompt_variant": variant, "decoding": "greedy",
                         "scorer": "exact" if metric == "exact_match" else "loglikelihood"})
    return rows
