"""Shared fixtures. No network: the hub and datasets run offline."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backend.loop import run_dir_for
from backend.store import Store

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).resolve().parent.parent

# the six domains of the built-in suite, and two mixtures over them (store tests)
DOMAINS = ["strings", "arithmetic", "logic", "recall", "noise", "code"]
UNIFORM = {d: 1 / 6 for d in DOMAINS}
PROPOSED = {"strings": 0.3, "arithmetic": 0.3, "logic": 0.1, "recall": 0.1, "noise": 0.05, "code": 0.15}

# the dashboard's fixtures (a real human-policy run, AppTest helpers)
pytest_plugins = ["conftest_dashboard"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of the real loop (run once in the default suite)")
    config.addinivalue_line("markers", "browser: drives the served dashboard in headless Chromium")
    config.addinivalue_line("markers", "demo: runs of the demo presets themselves (minutes each on 2 quiet cores): "
                                       "beyond CI's 10-minute suite, run with CLOSED_LOOP_FULL_DEMO=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CLOSED_LOOP_FULL_DEMO") == "1":
        return
    skip = pytest.mark.skip(reason="a run of a demo preset: set CLOSED_LOOP_FULL_DEMO=1")
    for item in items:
        if item.get_closest_marker("demo") is not None:  # not a parameter id that reads "demo"
            item.add_marker(skip)


def cli(*args, db, check=True, timeout=600, **kw):
    """Run `python -m backend ARGS --db DB --json` in a fresh process."""
    cmd = [sys.executable, "-m", "backend", *map(str, args), "--db", str(db), "--json"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def cli_json(*args, db, **kw):
    return json.loads(cli(*args, db=db, **kw).stdout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real short run (preset tiny, policy auto, real lm-eval), shared
    read-only by every test that only reads it. Returns (db path, run id)."""
    db = tmp_path_factory.mktemp("tiny") / "cl.db"
    res = cli_json("run", "--preset", "tiny", "--policy", "auto", db=db)
    assert res["status"] == "finished"
    return db, res["run"]


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A private copy of the tiny run's database (and run folder) to change."""
    db, run_id = tiny_run
    dst = tmp_path / "cl.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(str(db) + suffix).exists():
            shutil.copy(str(db) + suffix, str(dst) + suffix)
    src = run_dir_for(Store(db), run_id)
    if src.exists():
        shutil.copytree(src, run_dir_for(Store(dst), run_id))
    return dst, run_id


def check_constraints(w: dict, current: dict, cfg) -> None:
    """A proposal's weights obey a ControllerConfig's shared constraints."""
    assert set(w) == set(current)
    assert abs(sum(w.values()) - 1) < 1e-12
    for d, v in w.items():
        assert cfg.floor - 1e-9 <= v <= cfg.cap + 1e-9
        assert abs(v - current[d]) <= cfg.max_change + 1e-9


def check_rationale_lines(proposal, current: dict) -> None:
    """One line per domain, starting with the change as "old -> new" (3
    decimals) that matches the current and the proposed weight."""
    assert set(proposal.rationale) == set(current)
    for d, line in proposal.rationale.items():
        assert "\n" not in line
        m = re.match(r"(\d\.\d{3}) -> (\d\.\d{3})", line)
        assert m, line
        assert float(m.group(1)) == pytest.approx(current[d], abs=5e-4)
        assert float(m.group(2)) == pytest.approx(proposal.weights[d], abs=5e-4)


@pytest.fixture
def db(tmp_path):
    """A fresh on-disk database path."""
    return tmp_path / "cl.db"


@pytest.fixture
def store(db):
    """A Store on that database, closed after the test."""
    s = Store(db)
    yield s
    s.close()


# -- a small real tokenizer and a tiny real Llama (evaluation tests) -----------------


def small_tokenizer(out_dir, skills: list[str]):
    """A 300-token BPE tokenizer trained on 20,000 characters of one synthetic
    domain streaming `skills`."""
    from backend.config import DomainConfig
    from backend.data import tokenizer as tokenizer_mod
    from backend.data.domains import build_domains

    domains = build_domains([DomainConfig(name="strings", source="synthetic", skills=skills)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer_mod, "CHARS_PER_DOMAIN", 20_000)
        return tokenizer_mod.train_tokenizer(domains, 300, seed=0, out_dir=out_dir)


def tiny_model(tokenizer, context: int):
    """A one-layer, 64-wide Llama for `tokenizer` (seed 0)."""
    from backend.config import ModelConfig
    from backend.model import build_model

    cfg = ModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128)
    return build_model(cfg, len(tokenizer), context, eos_id=tokenizer.eos_token_id,
                       pad_id=tokenizer.pad_token_id, seed=0)
