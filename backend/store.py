"""The store: one SQLite file (WAL, busy timeout), the only module that opens it.

Dicts in, dicts out. JSON columns hold text, every other column a plain
SQLite type, so any SQLite tool can read the file. The worker and the
dashboard share nothing but this file; several processes and threads may
use it at once (each thread gets its own connection). Multi-row writes run
in one transaction; a decision is a conditional UPDATE, so of two people
deciding the same proposal at once exactly one wins and the other gets a
DecisionError that says what happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import sqlite_utils

from backend.mixture import WeightsError, validate_weights

DEFAULT_DB = "runs/closed_loop.db"
BUSY_TIMEOUT_MS = 10_000

RUN_STATES = ("created", "running", "paused", "stopped", "failed", "finished")
PROPOSAL_STATES = ("pending", "approved", "edited", "rejected", "superseded", "applied")
COMMANDS = ("pause", "resume", "stop")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,           -- resolved RunConfig as JSON
    policy TEXT NOT NULL,           -- auto | human
    status TEXT NOT NULL,           -- created | running | paused | stopped | failed | finished
    pid INTEGER,
    heartbeat REAL,                 -- unix seconds of the worker's last sign of life
    step INTEGER NOT NULL DEFAULT 0,
    tokens_seen INTEGER NOT NULL DEFAULT 0,
    tokens_per_s REAL,
    total_steps INTEGER,
    run_dir TEXT,
    parent_run INTEGER,             -- replay: the run whose schedule is followed
    replay_schedule TEXT,           -- replay: the imported schedule JSON
    error TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS domains (
    run_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    skills TEXT NOT NULL,           -- JSON list of skills it streams
    size_tokens INTEGER,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS skills (
    run_id INTEGER NOT NULL,
    name TEXT NOT NULL,             -- e.g. copy, copy_holdout
    base TEXT NOT NULL,             -- the synthetic skill it measures
    kind TEXT NOT NULL,             -- steer | holdout
    domains TEXT NOT NULL,          -- JSON list of domains that feed it
    tasks TEXT NOT NULL,            -- JSON list of lm-eval task names
    difficulty INTEGER,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    tokens_seen INTEGER NOT NULL,
    train_loss REAL,
    wall_time REAL,                 -- seconds since the run started training
    tokens_per_s REAL,
    path TEXT,
    weights TEXT,                   -- JSON mixture trained up to this step
    evaluated INTEGER NOT NULL DEFAULT 0,
    boundary_done INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS measurements (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    tokens_seen INTEGER NOT NULL,
    skill TEXT,                     -- NULL for per-domain loss
    domain TEXT,                    -- set for per-domain loss
    kind TEXT NOT NULL,             -- steer | holdout | domain_loss
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    stderr REAL,
    n INTEGER,
    prompt_variant TEXT NOT NULL DEFAULT '',
    decoding TEXT NOT NULL DEFAULT '',
    scorer TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, step, task, metric, prompt_variant, decoding, scorer)
);
CREATE TABLE IF NOT EXISTS capability (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    skill TEXT NOT NULL,
    tokens_seen INTEGER NOT NULL,
    score REAL NOT NULL,            -- latent capability (backend/capability.py)
    lo REAL NOT NULL,               -- 95% interval
    hi REAL NOT NULL,
    slope REAL,                     -- score change per checkpoint
    slope_lo REAL,
    slope_hi REAL,
    slope_per_token REAL,
    raw_mean REAL,                  -- mean exact match over templates at this step
    PRIMARY KEY (run_id, step, skill)
);
CREATE TABLE IF NOT EXISTS samples (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    task TEXT NOT NULL,
    doc_id INTEGER NOT NULL,
    prompt TEXT,
    target TEXT,
    response TEXT,
    correct INTEGER,
    PRIMARY KEY (run_id, step, task, doc_id)
);
CREATE TABLE IF NOT EXISTS proposals (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,          -- checkpoint that produced it
    strategy TEXT NOT NULL,         -- a registered strategy, or manual
    current_weights TEXT NOT NULL,  -- JSON mixture when proposed
    weights TEXT NOT NULL,          -- JSON weights as proposed
    rationale TEXT NOT NULL,        -- JSON domain -> one-line reason
    forecast TEXT NOT NULL,         -- JSON skill -> {score, expected}
    status TEXT NOT NULL,
    decision TEXT,                  -- approved | edited | rejected (kept after applied)
    decided_by TEXT,
    decided_at REAL,
    decision_reason TEXT,
    final_weights TEXT,             -- JSON weights that apply (approved or edited)
    applied_step INTEGER,
    version INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule (
    run_id INTEGER NOT NULL,
    from_step INTEGER NOT NULL,
    tokens_at INTEGER NOT NULL,
    weights TEXT NOT NULL,          -- JSON
    source TEXT NOT NULL,           -- initial | proposal | manual | replay
    proposal_id INTEGER,
    decided_by TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, from_step)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    proposal_id INTEGER,
    before TEXT,                    -- JSON
    after TEXT,                     -- JSON
    message TEXT
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    command TEXT NOT NULL,
    issued_by TEXT,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE TABLE IF NOT EXISTS forecast_errors (
    run_id INTEGER NOT NULL,
    proposal_id INTEGER NOT NULL,
    skill TEXT NOT NULL,
    step INTEGER NOT NULL,          -- checkpoint the forecast is scored at
    proposal_step INTEGER NOT NULL, -- checkpoint that made the forecast
    applied_step INTEGER NOT NULL,  -- checkpoint its mixture started training from
    score REAL,                     -- latent score at applied_step
    forecast REAL NOT NULL,         -- expected score at `step` (see record_forecast_errors)
    actual REAL NOT NULL,           -- latent score at `step`
    error REAL NOT NULL,            -- actual - forecast
    forecast_change REAL,           -- expected - score, as proposed
    actual_change REAL,             -- actual - score at applied_step
    basis TEXT,                     -- how the strategy forecast it
    PRIMARY KEY (run_id, proposal_id, skill)
);
CREATE INDEX IF NOT EXISTS measurements_by_skill ON measurements (run_id, skill, step);
CREATE INDEX IF NOT EXISTS proposals_by_run ON proposals (run_id, status);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, ts);
"""

_JSON_COLUMNS = {
    "config", "skills", "domains", "tasks", "weights", "current_weights", "rationale",
    "forecast", "final_weights", "before", "after", "replay_schedule",
}


class StoreError(Exception):
    """Base class of the store's named errors."""


class NotFound(StoreError, KeyError):
    """No run or proposal with that id."""

    def __str__(self) -> str:
        return str(self.args[0])


class DecisionError(StoreError):
    """A decision was refused: the proposal is no longer pending, or the
    edited weights are invalid. Nothing was changed."""


class CommandError(StoreError):
    """An unknown command, or one that does not fit the run's state."""


def _dumps(v) -> str | None:
    return None if v is None else json.dumps(v, sort_keys=False)


def _decode(row: dict) -> dict:
    for k in _JSON_COLUMNS & row.keys():
        if isinstance(row[k], str):
            row[k] = json.loads(row[k])
    return row


class Store:
    """The run database. `Store(path)` creates the file and schema if needed."""

    def __init__(self, path: str | os.PathLike = DEFAULT_DB):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self.db
        with db.ensure_autocommit_on():
            db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(self.path)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _write(self):
        """A write transaction that takes the write lock first (BEGIN
        IMMEDIATE): a read-then-write inside it can never hit a 'database is
        locked' upgrade failure; a busy lock is waited for (busy_timeout)."""
        db = self.db
        if db.conn.in_transaction:  # nested: sqlite-utils' atomic uses a savepoint
            with db.atomic():
                yield db
            return
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            raise
        else:
            db.conn.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _rows(self, sql: str, params=()) -> list[dict]:
        return [_decode(dict(r)) for r in self.db.query(sql, params)]

    def _one(self, sql: str, params=()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # -- runs -----------------------------------------------------------------
    def create_run(self, config: dict, *, parent_run: int | None = None,
                   replay_schedule: dict | None = None) -> int:
        """Insert a run from its resolved config; returns the run id."""
        with self._write():
            cur = self.db.execute(
                "INSERT INTO runs (name, config, policy, status, total_steps, parent_run, "
                "replay_schedule, created_at) VALUES (?, ?, ?, 'created', ?, ?, ?, ?)",
                (config["name"], _dumps(config), config["policy"], config["train"]["steps"],
                 parent_run, _dumps(replay_schedule), time.time()),
            )
            run_id = cur.lastrowid
            self._event(run_id, "run_created", f"run {run_id} ({config['name']}) created")
        return run_id

    def run(self, run_id: int) -> dict:
        """One run; NotFound lists what exists."""
        row = self._one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if row is None:
            ids = [r["id"] for r in self.db.query("SELECT id FROM runs ORDER BY id")]
            raise NotFound(f"no run {run_id} (runs: {', '.join(map(str, ids)) or 'none'})")
        return row

    def runs(self) -> list[dict]:
        """All runs, newest first, with the number of pending proposals."""
        return self._rows(
            "SELECT r.*, (SELECT COUNT(*) FROM proposals p WHERE p.run_id = r.id AND "
            "p.status = 'pending') AS pending FROM runs r ORDER BY r.id DESC"
        )

    def update_run(self, run_id: int, **fields) -> None:
        for k in fields:
            if k in _JSON_COLUMNS:
                fields[k] = _dumps(fields[k])
        if "status" in fields and fields["status"] not in RUN_STATES:
            raise StoreError(f"unknown run status {fields['status']!r}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), run_id))
        self.db.commit()

    def heartbeat(self, run_id: int, **fields) -> None:
        """Record the worker's sign of life (and progress fields)."""
        self.update_run(run_id, heartbeat=time.time(), **fields)

    def set_policy(self, run_id: int, policy: str, by: str = "cli") -> None:
        if policy not in ("auto", "human"):
            raise StoreError(f"policy must be auto or human, got {policy!r}")
        with self._write():
            before = self.run(run_id)["policy"]
            self.db.execute("UPDATE runs SET policy = ? WHERE id = ?", (policy, run_id))
            self._event(run_id, "policy", f"policy {before} -> {policy}", actor=by,
                        before={"policy": before}, after={"policy": policy})

    # -- domains and skills ---------------------------------------------------
    def set_domains(self, run_id: int, domains: list[dict]) -> None:
        rows = [{**d, "run_id": run_id, "skills": _dumps(d.get("skills", []))} for d in domains]
        with self._write():
            self.db.execute("DELETE FROM domains WHERE run_id = ?", (run_id,))
            self.db["domains"].insert_all(rows)

    def domains(self, run_id: int) -> list[dict]:
        return self._rows("SELECT * FROM domains WHERE run_id = ? ORDER BY rowid", (run_id,))

    def set_skills(self, run_id: int, skills: list[dict]) -> None:
        rows = [{**s, "run_id": run_id, "domains": _dumps(s["domains"]), "tasks": _dumps(s["tasks"])}
                for s in skills]
        with self._write():
            self.db.execute("DELETE FROM skills WHERE run_id = ?", (run_id,))
            self.db["skills"].insert_all(rows)

    def skills(self, run_id: int) -> list[dict]:
        return self._rows("SELECT * FROM skills WHERE run_id = ? ORDER BY rowid", (run_id,))

    # -- checkpoints ----------------------------------------------------------
    def add_checkpoint(self, run_id: int, *, step: int, tokens_seen: int, train_loss: float | None,
                       wall_time: float, tokens_per_s: float | None, path: str,
                       weights: dict) -> None:
        """Record a checkpoint whose files are complete on disk (idempotent)."""
        self.db.execute(
            "INSERT INTO checkpoints (run_id, step, tokens_seen, train_loss, wall_time, "
            "tokens_per_s, path, weights, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, step) DO UPDATE SET path = excluded.path",
            (run_id, step, tokens_seen, train_loss, wall_time, tokens_per_s, path,
             _dumps(weights), time.time()),
        )
        self.db.commit()

    def mark_checkpoint(self, run_id: int, step: int, **flags) -> None:
        """Set `evaluated` / `boundary_done` on a checkpoint."""
        sets = ", ".join(f"{k} = ?" for k in flags)
        self.db.execute(f"UPDATE checkpoints SET {sets} WHERE run_id = ? AND step = ?",
                        (*[int(v) for v in flags.values()], run_id, step))
        self.db.commit()

    def checkpoints(self, run_id: int) -> list[dict]:
        return self._rows("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step", (run_id,))

    def checkpoint(self, run_id: int, step: int) -> dict | None:
        return self._one("SELECT * FROM checkpoints WHERE run_id = ? AND step = ?", (run_id, step))

    # -- measurements ---------------------------------------------------------
    def add_measurements(self, run_id: int, rows: list[dict]) -> None:
        """Insert or replace measurements (keyed by step, task, metric, facets)."""
        now = time.time()
        full = [{"prompt_variant": "", "decoding": "", "scorer": "", "stderr": None, "n": None,
                 "skill": None, "domain": None, **r, "run_id": run_id, "created_at": now} for r in rows]
        with self._write():
            self.db["measurements"].insert_all(full, replace=True)

    def measurements(self, run_id: int, *, kind: str | None = None, skill: str | None = None,
                     since_step: int | None = None) -> list[dict]:
        """Measurements of a run, by step; optionally one kind, one skill, or
        only steps >= since_step (to read just what is new)."""
        sql, params = "SELECT * FROM measurements WHERE run_id = ?", [run_id]
        if since_step is not None:
            sql, params = sql + " AND step >= ?", params + [since_step]
        if kind:
            sql, params = sql + " AND kind = ?", params + [kind]
        if skill:
            sql, params = sql + " AND skill = ?", params + [skill]
        return self._rows(sql + " ORDER BY step, task, metric", params)

    def set_capability(self, run_id: int, rows: list[dict]) -> None:
        """Insert or replace latent capability estimates (one row per step and skill)."""
        keys = ("step", "skill", "tokens_seen", "score", "lo", "hi", "slope", "slope_lo", "slope_hi",
                "slope_per_token", "raw_mean")
        full = [{**{k: r.get(k) for k in keys}, "run_id": run_id} for r in rows]
        with self._write():
            self.db["capability"].insert_all(full, replace=True)

    def capability(self, run_id: int, skill: str | None = None, since_step: int | None = None) -> list[dict]:
        """Latent estimates of a run, by step; optionally one skill, or only
        steps >= since_step."""
        sql, params = "SELECT * FROM capability WHERE run_id = ?", [run_id]
        if since_step is not None:
            sql, params = sql + " AND step >= ?", params + [since_step]
        if skill:
            sql, params = sql + " AND skill = ?", params + [skill]
        return self._rows(sql + " ORDER BY step, skill", params)

    def record_forecast_errors(self, run_id: int, step: int) -> list[dict]:
        """At checkpoint `step`: score the forecasts of the proposal whose
        mixture trained the stretch that ended here against the latent
        scores at `step` (capability rows); returns the rows recorded.

        Only the first checkpoint after a proposal was applied is scored (a
        forecast looks one checkpoint ahead); replayed and manual segments
        carry no forecast. A proposal applied later than it was made (a
        person approved it after the next checkpoint) is scored from where
        its mixture started: forecast = latent score at applied_step +
        (expected - score), the change it predicted; when it was applied at
        once this is `expected` itself. Insert-or-replace, so a resumed
        worker may call it again."""
        prev = self._one("SELECT MAX(step) AS step FROM capability WHERE run_id = ? AND step < ?",
                         (run_id, step))
        if prev is None or prev["step"] is None:
            return []
        seg = self._one("SELECT * FROM schedule WHERE run_id = ? AND from_step <= ? "
                        "ORDER BY from_step DESC LIMIT 1", (run_id, prev["step"]))
        if seg is None or seg["proposal_id"] is None or seg["from_step"] != prev["step"]:
            return []
        p = self.proposal(seg["proposal_id"])
        now = {r["skill"]: r["score"] for r in self.capability(run_id) if r["step"] == step}
        then = {r["skill"]: r["score"] for r in self.capability(run_id) if r["step"] == prev["step"]}
        rows = []
        for skill, f in (p["forecast"] or {}).items():
            if skill not in now or f.get("expected") is None:
                continue
            proposed_from = f.get("score")
            base = then.get(skill, proposed_from)
            change = f["expected"] - proposed_from if proposed_from is not None else None
            if base is None or change is None or base == proposed_from:
                forecast = f["expected"]  # applied where it was made: the forecast as it stands
            else:
                forecast = base + change
            rows.append({
                "run_id": run_id, "proposal_id": p["id"], "skill": skill, "step": step,
                "proposal_step": p["step"], "applied_step": seg["from_step"], "score": base,
                "forecast": forecast, "actual": now[skill], "error": now[skill] - forecast,
                "forecast_change": change,
                "actual_change": now[skill] - base if base is not None else None,
                "basis": f.get("basis"),
            })
        if rows:
            with self._write():
                self.db["forecast_errors"].insert_all(rows, replace=True)
        return rows

    def forecast_errors(self, run_id: int, skill: str | None = None) -> list[dict]:
        """Every scored forecast of the run (record_forecast_errors), by step and skill."""
        sql, params = "SELECT * FROM forecast_errors WHERE run_id = ?", [run_id]
        if skill:
            sql, params = sql + " AND skill = ?", params + [skill]
        return self._rows(sql + " ORDER BY step, skill", params)

    def add_samples(self, run_id: int, step: int, rows: list[dict]) -> None:
        """Per-item results of one checkpoint (which items fail)."""
        full = [{**r, "run_id": run_id, "step": step} for r in rows]
        with self._write():
            self.db["samples"].insert_all(full, replace=True)

    def samples(self, run_id: int, step: int, task: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM samples WHERE run_id = ? AND step = ?", [run_id, step]
        if task:
            sql, params = sql + " AND task = ?", params + [task]
        return self._rows(sql + " ORDER BY task, doc_id", params)

    # -- proposals ------------------------------------------------------------
    def add_proposal(self, run_id: int, *, step: int, strategy: str, current_weights: dict,
                     weights: dict, rationale: dict, forecast: dict) -> int:
        """Store a pending proposal; older pending ones become superseded.
        Idempotent per (run, step, strategy) so a resumed worker adds none twice."""
        with self._write():
            old = self._one("SELECT id FROM proposals WHERE run_id = ? AND step = ? AND strategy = ?",
                            (run_id, step, strategy))
            if old:
                return old["id"]
            self._supersede_pending(run_id, "a newer proposal arrived")
            cur = self.db.execute(
                "INSERT INTO proposals (run_id, step, strategy, current_weights, weights, rationale, "
                "forecast, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                (run_id, step, strategy, _dumps(current_weights), _dumps(weights), _dumps(rationale),
                 _dumps(forecast), time.time()),
            )
            pid = cur.lastrowid
            self._event(run_id, "proposed", f"proposal {pid} by {strategy} at step {step}",
                        proposal_id=pid, before=current_weights, after=weights)
        return pid

    def _supersede_pending(self, run_id: int, why: str) -> None:
        for p in self._rows("SELECT id FROM proposals WHERE run_id = ? AND status = 'pending'", (run_id,)):
            self.db.execute("UPDATE proposals SET status = 'superseded', version = version + 1 "
                            "WHERE id = ?", (p["id"],))
            self._event(run_id, "superseded", f"proposal {p['id']} superseded: {why}", proposal_id=p["id"])

    def proposal(self, proposal_id: int) -> dict:
        row = self._one("SELECT * FROM proposals WHERE id = ?", (proposal_id,))
        if row is None:
            raise NotFound(f"no proposal {proposal_id}")
        return row

    def proposals(self, run_id: int, status: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM proposals WHERE run_id = ?", [run_id]
        if status:
            sql, params = sql + " AND status = ?", params + [status]
        return self._rows(sql + " ORDER BY id", params)

    def decide(self, proposal_id: int, action: str, *, weights: dict | None = None,
               by: str = "cli", reason: str | None = None) -> dict:
        """approve | reject | edit a pending proposal; returns it updated.

        Refused with DecisionError (and nothing changed) when the proposal is
        not pending any more, or edited weights are invalid."""
        if action not in ("approve", "reject", "edit"):
            raise DecisionError(f"unknown action {action!r} (approve, reject, edit)")
        p = self.proposal(proposal_id)
        final = None
        if action == "edit":
            if weights is None:
                raise DecisionError("edit needs weights")
            try:
                final = validate_weights(weights, list(p["current_weights"]))
            except WeightsError as e:
                raise DecisionError(f"edited weights refused: {e}") from None
        elif action == "approve":
            final = p["weights"]
        status = {"approve": "approved", "reject": "rejected", "edit": "edited"}[action]
        now = time.time()
        with self._write():
            # the conditional UPDATE is the lock: of two deciders one changes a row
            cur = self.db.execute(
                "UPDATE proposals SET status = ?, decision = ?, decided_by = ?, decided_at = ?, "
                "decision_reason = ?, final_weights = ?, version = version + 1 "
                "WHERE id = ? AND status = 'pending'",
                (status, status, by, now, reason, _dumps(final), proposal_id),
            )
            if cur.rowcount != 1:
                now_p = self.proposal(proposal_id)
                who = f" by {now_p['decided_by']}" if now_p["decided_by"] else ""
                raise DecisionError(
                    f"proposal {proposal_id} is {now_p['status']}{who}, not pending: decision refused"
                )
            self._event(p["run_id"], status, f"proposal {proposal_id} {status}" + (f": {reason}" if reason else ""),
                        actor=by, proposal_id=proposal_id, before=p["current_weights"], after=final)
        return self.proposal(proposal_id)

    def set_mixture(self, run_id: int, weights: dict, *, step: int, by: str = "cli",
                    reason: str | None = None) -> int:
        """A person's manual mixture: validated, stored as an approved
        `manual` proposal, applied at the next checkpoint like any other."""
        current = self.current_weights(run_id)
        try:
            final = validate_weights(weights, list(current))
        except WeightsError as e:
            raise DecisionError(f"manual mixture refused: {e}") from None
        with self._write():
            cur = self.db.execute(
                "INSERT INTO proposals (run_id, step, strategy, current_weights, weights, rationale, "
                "forecast, status, decision, decided_by, decided_at, decision_reason, final_weights, "
                "created_at) VALUES (?, ?, 'manual', ?, ?, ?, '{}', 'approved', 'approved', ?, ?, ?, ?, ?)",
                (run_id, step, _dumps(current), _dumps(final),
                 _dumps({d: f"{current[d]:.3f} -> {final[d]:.3f}: set by {by}" for d in final}),
                 by, time.time(), reason, _dumps(final), time.time()),
            )
            pid = cur.lastrowid
            self._event(run_id, "manual", f"manual mixture (proposal {pid})", actor=by,
                        proposal_id=pid, before=current, after=final)
        return pid

    def apply_approved(self, run_id: int, *, step: int, tokens_at: int) -> dict | None:
        """At a checkpoint: the newest approved or edited proposal starts a
        schedule segment at `step`; older approved ones are superseded.
        Returns the applied proposal, or None."""
        with self._write():
            ready = self._rows(
                "SELECT * FROM proposals WHERE run_id = ? AND status IN ('approved', 'edited') "
                "ORDER BY decided_at DESC, id DESC", (run_id,))
            if not ready:
                return None
            newest, older = ready[0], ready[1:]
            for p in older:
                self.db.execute("UPDATE proposals SET status = 'superseded', version = version + 1 "
                                "WHERE id = ?", (p["id"],))
                self._event(run_id, "superseded", f"proposal {p['id']} superseded by {newest['id']}",
                            proposal_id=p["id"])
            self.db.execute("UPDATE proposals SET status = 'applied', applied_step = ?, "
                            "version = version + 1 WHERE id = ?", (step, newest["id"]))
            source = "manual" if newest["strategy"] == "manual" else "proposal"
            self._add_segment(run_id, step, tokens_at, newest["final_weights"], source,
                              newest["id"], newest["decided_by"])
            self._event(run_id, "applied", f"proposal {newest['id']} applied at step {step}",
                        actor="worker", proposal_id=newest["id"], after=newest["final_weights"])
        return self.proposal(newest["id"])

    # -- schedule -------------------------------------------------------------
    def add_segment(self, run_id: int, *, from_step: int, tokens_at: int, weights: dict,
                    source: str, proposal_id: int | None = None, decided_by: str | None = None) -> None:
        with self._write():
            self._add_segment(run_id, from_step, tokens_at, weights, source, proposal_id, decided_by)

    def _add_segment(self, run_id, from_step, tokens_at, weights, source, proposal_id, decided_by):
        self.db.execute(
            "INSERT OR REPLACE INTO schedule (run_id, from_step, tokens_at, weights, source, "
            "proposal_id, decided_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, from_step, tokens_at, _dumps(weights), source, proposal_id, decided_by, time.time()),
        )

    def schedule(self, run_id: int) -> list[dict]:
        return self._rows("SELECT * FROM schedule WHERE run_id = ? ORDER BY from_step", (run_id,))

    def current_weights(self, run_id: int) -> dict[str, float]:
        row = self._one("SELECT weights FROM schedule WHERE run_id = ? ORDER BY from_step DESC LIMIT 1",
                        (run_id,))
        if row is None:
            raise StoreError(f"run {run_id} has no mixture yet")
        return row["weights"]

    # -- events and commands --------------------------------------------------
    def log_event(self, run_id: int | None, kind: str, message: str, **kw) -> None:
        self._event(run_id, kind, message, **kw)
        self.db.commit()

    def _event(self, run_id, kind, message, *, actor=None, proposal_id=None, before=None, after=None):
        self.db.execute(
            "INSERT INTO events (run_id, ts, kind, actor, proposal_id, before, after, message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, time.time(), kind, actor, proposal_id, _dumps(before), _dumps(after), message),
        )

    def events(self, run_id: int, kind: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM events WHERE run_id = ?", [run_id]
        if kind:
            sql, params = sql + " AND kind = ?", params + [kind]
        return self._rows(sql + " ORDER BY id", params)

    # -- Goodhart alerts -------------------------------------------------------
    def raise_alert(self, run_id: int, *, step: int, skill: str, message: str, data: dict) -> bool:
        """Record a Goodhart alert for a steer skill unless one is open;
        returns True when a new alert was stored."""
        with self._write():
            if skill in self.open_alerts(run_id):
                return False
            self._event(run_id, "goodhart_alert", message, actor="guard",
                        after={**data, "skill": skill, "step": step})
        return True

    def open_alerts(self, run_id: int) -> dict[str, dict]:
        """Skill -> its latest alert event, for alerts not yet acknowledged."""
        open_: dict[str, dict] = {}
        for e in self._rows("SELECT * FROM events WHERE run_id = ? AND kind IN "
                            "('goodhart_alert', 'goodhart_ack') ORDER BY id", (run_id,)):
            skill = (e["after"] or {}).get("skill")
            if e["kind"] == "goodhart_alert":
                open_[skill] = e
            else:
                open_.pop(skill, None)
        return open_

    def acknowledge_alert(self, run_id: int, skill: str, *, by: str, step: int, note: str | None = None) -> None:
        """A person acknowledges a skill's alert: the controller may push the
        skill again, and the guard compares progress from `step` on."""
        with self._write():
            if skill not in self.open_alerts(run_id):
                raise StoreError(f"run {run_id} has no open Goodhart alert for skill {skill!r}")
            self._event(run_id, "goodhart_ack", f"alert on {skill} acknowledged" + (f": {note}" if note else ""),
                        actor=by, after={"skill": skill, "step": step})

    def last_ack_step(self, run_id: int, skill: str) -> int | None:
        for e in reversed(self.events(run_id, "goodhart_ack")):
            if (e["after"] or {}).get("skill") == skill:
                return e["after"].get("step")
        return None

    def send_command(self, run_id: int, command: str, by: str = "cli") -> int:
        """Queue pause / resume / stop for the run's worker."""
        if command not in COMMANDS:
            raise CommandError(f"unknown command {command!r} (known: {', '.join(COMMANDS)})")
        status = self.run(run_id)["status"]
        if status in ("finished", "failed", "stopped") and command != "stop":
            raise CommandError(f"run {run_id} is {status}; use `run --resume {run_id}` to continue it")
        with self._write():
            cur = self.db.execute(
                "INSERT INTO commands (run_id, command, issued_by, created_at) VALUES (?, ?, ?, ?)",
                (run_id, command, by, time.time()))
            self._event(run_id, "command", f"{command} requested", actor=by)
        return cur.lastrowid

    def take_commands(self, run_id: int) -> list[str]:
        """The worker's side: pending commands, oldest first, marked done."""
        with self._write():
            rows = self._rows("SELECT id, command FROM commands WHERE run_id = ? AND done_at IS NULL "
                              "ORDER BY id", (run_id,))
            for r in rows:
                self.db.execute("UPDATE commands SET done_at = ? WHERE id = ?", (time.time(), r["id"]))
        return [r["command"] for r in rows]
