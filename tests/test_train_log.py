"""Training curves: the store's train_log table, RunClient.report_steps and
StepLog's windows, and what the built-in loop logs as it trains (real loop
and store, backend.testing's fakes)."""

from __future__ import annotations

import sqlite3

import pytest

from backend.client import RunClient, StepLog
from backend.config import preset
from backend.loop import ClosedLoop
from backend.store import Store, StoreError
from backend.testing import fake_components


@pytest.fixture
def client(tmp_path) -> RunClient:
    store = Store(tmp_path / "cl.db")
    return RunClient(store, store.create_run(preset("tiny").to_dict()))


def test_rows_are_stored_by_step_and_a_retrained_step_replaces_its_row(client):
    client.report_steps([{"step": 2, "loss": 3.0, "lr": 1e-3}, {"step": 1, "loss": 4.0, "grad_norm": 2.0}])
    client.report_steps([{"step": 2, "loss": 2.5, "tokens_per_s": 100.0}])
    rows = client.store.train_log(client.run_id)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1] == {"step": 2, "tokens_seen": 2 * client.tokens_per_step, "loss": 2.5, "lr": None,
                       "grad_norm": None, "tokens_per_s": 100.0}
    assert [r["step"] for r in client.store.train_log(client.run_id, since_step=2)] == [2]


@pytest.mark.parametrize("row, message", [({"step": 1, "los": 1.0}, r"rows\[1\]\.los: unknown key"),
                                          ({"loss": 1.0}, r"rows\[1\]\.step: an optimizer step"),
                                          ({"step": -1}, r"rows\[1\]\.step: .* got -1")])
def test_bad_rows_are_refused_naming_the_key_and_nothing_is_written(client, row, message):
    with pytest.raises(StoreError, match=message):
        client.report_steps([{"step": 5, "loss": 1.0}, row])
    assert client.store.train_log(client.run_id) == []


def test_step_log_sums_windows_and_writes_the_partial_last_one(client):
    log = StepLog(client, every=3, flush_s=3600)
    for step, loss in zip(range(1, 8), [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]):
        log.add(step, loss, lr=step / 100, grad_norm=None if step == 1 else float(step))
    assert client.store.train_log(client.run_id) == []  # not flushed yet: one write a second at most
    log.close()
    rows = client.store.train_log(client.run_id)
    assert [r["step"] for r in rows] == [3, 6, 7]
    assert [r["loss"] for r in rows] == [6.0, 3.0, 1.0] and [r["lr"] for r in rows] == [0.03, 0.06, 0.07]
    assert rows[0]["grad_norm"] == 2.5  # the steps that have one
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_the_window_keeps_a_run_near_train_log_rows(client):
    from backend.client import TRAIN_LOG_ROWS

    assert client.step_log().every == 1  # the tiny run: every step
    cfg = preset("tiny").replace(train={**preset("tiny").to_dict()["train"], "steps": 10 * TRAIN_LOG_ROWS + 1})
    long = RunClient(client.store, client.store.create_run(cfg.to_dict()))
    assert long.step_log().every == 11


def test_the_loop_logs_every_step_of_a_short_run(tmp_path):
    store = Store(tmp_path / "cl.db")
    run_id = store.create_run(preset("tiny").to_dict())
    assert ClosedLoop(store, run_id, components=fake_components(), progress=False).run() == "finished"
    rows = store.train_log(run_id)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[-1]["loss"] == pytest.approx(5.0 / (1 + 0.1 * 30))  # the fake trainer's loss at step 30
    assert rows[-1]["grad_norm"] == pytest.approx(1 / (1 + 0.05 * 30)) and rows[-1]["lr"] == 1e-3


def test_an_old_database_gains_the_table_on_open(tmp_path):
    path = tmp_path / "old.db"
    Store(path).close()
    with sqlite3.connect(path) as con:
        con.execute("DROP TABLE train_log")
    store = Store(path)
    run_id = store.create_run(preset("tiny").to_dict())
    store.add_train_log(run_id, [{"step": 1, "tokens_seen": 10, "loss": 1.0}])
    assert store.train_log(run_id)[0]["loss"] == 1.0
