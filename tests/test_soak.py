"""bench/soak.py --quick end to end: kill -9 and resume, concurrent writers
beside a live worker, and the fuzz of schedules and configs, each held to
its own pass rule (the soak's exit status)."""

import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_quick_soak_holds(tmp_path):
    p = subprocess.run([sys.executable, "bench/soak.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                       timeout=1500)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    assert p.returncode == 0 and last.startswith("soak: OK"), p.stdout[-3000:] + p.stderr[-3000:]
    assert "0 lock errors" in p.stdout and "0 unexpected exceptions, 0 database changes on refusal" in p.stdout
    assert "schedule equal True" in p.stdout and "max |dw| 0" in p.stdout
