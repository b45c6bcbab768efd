"""Fixtures of the dashboard tests (test_app, test_browser, test_report).

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

import pytest
from conftest import ROOT, cli_json

_RUNS: dict[str, tuple[Path, int]] = {}


@pytest.fixture(scope="session")
def human_run(tmp_path_factory) -> tuple[Path, int]:
    """(db path, run id) of a finished tiny run whose last proposal waits
    for a person. Read-only: copy it (`dashboard_db`) to change it."""
    if "human" not in _RUNS:
        db = tmp_path_factory.mktemp("human") / "cl.db"
        res = cli_json("run", "--preset", "tiny", "--policy", "human", db=db)
        assert res["status"] == "finished"
        _RUNS["human"] = (db, res["run"])
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

    Streamlit treats a `pages/` folder next to the entry script as a v1
    multipage app until the first st.navigation call of the process. A
    server makes that call on its first run (and a page visited first
    reruns through app.py: pages/_common._ensure_navigation), but AppTest
    resets the flag before every run, so every switched page would take that
    detour, and a plain st.button click is lost in the rerun. Tests start
    where a server is after its first run."""
    from streamlit.runtime.pages_manager import PagesManager

    init = PagesManager.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

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
