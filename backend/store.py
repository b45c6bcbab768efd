"""The store: one SQLite file (WAL, busy timeout), the only module that opens it.

Dicts in, dicts out; the store keeps data and nothing else. The rules that
give the data meaning live with their owners: weights and decisions in
backend/decisions.py, forecast scoring in backend/forecast_errors.py,
Goodhart alerts in backend/guard.py, the run-state vocabulary in
backend/vocab.py. JSON columns hold text, every other column a plain SQLite
type, and child tables name their parent with a FOREIGN KEY, so any SQLite
tool (datasette, a browser) reads the file and shows how the tables link.

The worker and the dashboard share nothing but this file; several processes
and threads may use it at once (each thread gets its own connection). Every
write goes through one path, `transaction()` (BEGIN IMMEDIATE): a service
module reads, checks its rule and writes inside one transaction, so of two
people deciding the same proposal at once exactly one sees it pending.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import sqlite_utils

from backend.vocab import RUN_STATES

DEFAULT_DB = "runs/closed_loop.db"
BUSY_TIMEOUT_MS = 10_000

PROPOSAL_STATES = ("pending", "approved", "edited", "rejected", "superseded", "expired", "applied")
SEGMENT_SOURCES = ("initial", "proposal", "manual", "replay")
AUTO = "auto"
"""decided_by of a decision the policy made, not a person."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,           -- resolved RunConfig as JSON
    policy TEXT NOT NULL,           -- auto | human
    status TEXT NOT NULL,           -- created | running | paused | stopped | failed | finished
    pid INTEGER,
    heartbeat REAL,                 -- unix seconds of the worker's last sign of life (UI only)
    step INTEGER NOT NULL DEFAULT 0,
    tokens_seen INTEGER NOT NULL DEFAULT 0,
    tokens_per_s REAL,
    total_steps INTEGER,
    run_dir TEXT,                   -- run folder (the worker's lock file lives there)
    phase TEXT,                     -- what the worker does now: training, evaluating task k of n, ...
    phase_started REAL,             -- unix seconds the phase began
    parent_run INTEGER,             -- replay: the run whose schedule is followed
    replay_schedule TEXT,           -- replay: the imported schedule JSON
    error TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS domains (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    skills TEXT NOT NULL,           -- JSON list of skills it streams
    size_tokens INTEGER,
    tokens_per_doc REAL,            -- measured mean tokens per document (document-sampling exports)
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS skills (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,             -- e.g. copy, copy_holdout
    base TEXT NOT NULL,             -- the synthetic skill it measures
    kind TEXT NOT NULL,             -- steer | holdout
    domains TEXT NOT NULL,          -- JSON list of domains that feed it
    tasks TEXT NOT NULL,            -- JSON list of lm-eval task names
    difficulty INTEGER,
    metric TEXT,                    -- the metric that scores the skill (NULL: exact_match)
    higher_is_better INTEGER,       -- its direction (NULL: 1)
    chance REAL,                    -- the score of a uniform guess or the best constant answer
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    step INTEGER NOT NULL,
    tokens_seen INTEGER NOT NULL,
    train_loss REAL,
    wall_time REAL,                 -- seconds since the run started training
    tokens_per_s REAL,
    path TEXT,
    weights TEXT,                   -- JSON mixture trained up to this step
    domain_usage TEXT,              -- JSON {domain: {"tokens": trained so far, "epochs": passes (null: endless),
                                    --   "train_tokens": its training tokens (null: endless)}}
    evaluated INTEGER NOT NULL DEFAULT 0,
    boundary_done INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS measurements (
    run_id INTEGER NOT NULL REFERENCES runs (id),
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
    run_id INTEGER NOT NULL REFERENCES runs (id),
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
    run_id INTEGER NOT NULL REFERENCES runs (id),
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
    run_id INTEGER NOT NULL REFERENCES runs (id),
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
    run_id INTEGER NOT NULL REFERENCES runs (id),
    from_step INTEGER NOT NULL,
    tokens_at INTEGER NOT NULL,
    weights TEXT NOT NULL,          -- JSON
    source TEXT NOT NULL,           -- initial | proposal | manual | replay
    proposal_id INTEGER REFERENCES proposals (id),
    decided_by TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, from_step)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER REFERENCES runs (id),
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    proposal_id INTEGER REFERENCES proposals (id),
    before TEXT,                    -- JSON
    after TEXT,                     -- JSON
    message TEXT
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    command TEXT NOT NULL,
    issued_by TEXT,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE TABLE IF NOT EXISTS forecast_errors (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    proposal_id INTEGER NOT NULL REFERENCES proposals (id),
    skill TEXT NOT NULL,
    step INTEGER NOT NULL,          -- checkpoint the forecast is scored at
    proposal_step INTEGER NOT NULL, -- checkpoint that made the forecast
    applied_step INTEGER NOT NULL,  -- checkpoint its mixture started training from
    score REAL,                     -- latent score at applied_step
    forecast REAL NOT NULL,         -- expected score at `step` (backend/forecast_errors.py)
    actual REAL NOT NULL,           -- latent score at `step`
    error REAL NOT NULL,            -- actual - forecast
    forecast_change REAL,           -- expected - score, as proposed
    actual_change REAL,             -- actual - score at applied_step
    basis TEXT,                     -- how the strategy forecast it
    PRIMARY KEY (run_id, proposal_id, skill)
);
CREATE TABLE IF NOT EXISTS affinity_pins (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    skill TEXT NOT NULL,
    domain TEXT NOT NULL,
    pinned INTEGER NOT NULL,        -- 1: the domain feeds the skill (on), 0: it does not (off)
    by TEXT,
    reason TEXT,
    ts REAL NOT NULL,
    PRIMARY KEY (run_id, skill, domain)
);
CREATE TABLE IF NOT EXISTS objectives (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    objective TEXT NOT NULL,        -- JSON: the [objective] table a person saved (validated); the newest applies
    by TEXT,
    reason TEXT,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS train_log (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    step INTEGER NOT NULL,          -- last optimizer step of the window the row sums up
    tokens_seen INTEGER NOT NULL,   -- training tokens at `step`
    loss REAL,                      -- mean training loss over the window (nats/token)
    lr REAL,                        -- learning rate at `step`
    grad_norm REAL,                 -- mean global gradient norm before clipping over the window
    tokens_per_s REAL,              -- training tokens per wall second over the window (evaluation excluded)
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS affinity (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    step INTEGER NOT NULL,          -- checkpoint it was estimated at
    skill TEXT NOT NULL,
    domain TEXT NOT NULL,
    mean REAL NOT NULL,             -- how much the domain feeds the skill (backend/affinity.py)
    lo REAL NOT NULL,               -- 95% interval
    hi REAL NOT NULL,
    prior REAL NOT NULL,            -- the prior mean (declared link or not)
    source TEXT NOT NULL,           -- prior | learned | pinned
    PRIMARY KEY (run_id, step, skill, domain)
);
CREATE TABLE IF NOT EXISTS alignment (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    step INTEGER NOT NULL,          -- checkpoint it was measured at
    skill TEXT NOT NULL,            -- a steer skill
    domain TEXT NOT NULL,
    value REAL NOT NULL,            -- centred cosine of the domain's gradient with the skill's answer gradient
    stderr REAL,                    -- jackknife (backend/evaluation/alignment.py)
    n INTEGER,                      -- the skill's items in the probe
    PRIMARY KEY (run_id, step, skill, domain)
);
CREATE INDEX IF NOT EXISTS measurements_by_skill ON measurements (run_id, skill, step);
CREATE INDEX IF NOT EXISTS proposals_by_run ON proposals (run_id, status);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, ts);
"""

_JSON_COLUMNS = {
    "config", "skills", "domains", "tasks", "weights", "current_weights", "rationale",
    "forecast", "final_weights", "before", "after", "replay_schedule", "objective", "domain_usage",
}

# columns a caller may set after the row exists (anything else is a bug, named)
RUN_FIELDS = ("status", "policy", "pid", "heartbeat", "step", "tokens_seen", "tokens_per_s", "run_dir", "error",
              "phase", "phase_started")
# columns added after the first schema: a database made before them gains them on open
ADDED_COLUMNS = (
    ("runs", "phase", "TEXT"), ("runs", "phase_started", "REAL"), ("domains", "tokens_per_doc", "REAL"),
    ("skills", "metric", "TEXT"), ("skills", "higher_is_better", "INTEGER"), ("skills", "chance", "REAL"),
    ("checkpoints", "domain_usage", "TEXT"),
)
TRAIN_LOG_KEYS = ("step", "tokens_seen", "loss", "lr", "grad_norm", "tokens_per_s")
"""The keys of a train_log row (Store.add_train_log, RunClient.report_steps)."""
CHECKPOINT_FLAGS = ("evaluated", "boundary_done")
DECISION_FIELDS = ("status", "decision", "decided_by", "decided_at", "decision_reason", "final_weights")


class StoreError(Exception):
    """Base class of the store's named errors."""


class NotFound(StoreError, KeyError):
    """No run or proposal with that id."""

    def __str__(self) -> str:
        return str(self.args[0])


def _dumps(v) -> str | None:
    return None if v is None else json.dumps(v, sort_keys=False)


def _encode(row: dict) -> dict:
    """JSON columns as text, so sqlite-utils stores exactly what we dump."""
    return {k: _dumps(v) if k in _JSON_COLUMNS else v for k, v in row.items()}


def _decode(row: dict) -> dict:
    for k in _JSON_COLUMNS & row.keys():
        if isinstance(row[k], str):
            row[k] = json.loads(row[k])
    return row


def _check_fields(fields: dict, allowed: tuple[str, ...], what: str) -> None:
    unknown = [k for k in fields if k not in allowed]
    if unknown:
        raise StoreError(f"unknown {what} field {unknown[0]!r} (fields: {', '.join(allowed)})")


class Store:
    """The run database. `Store(path)` creates the file and schema if needed;
    a database written by an older schema (no foreign keys) opens as it is."""

    def __init__(self, path: str | os.PathLike = DEFAULT_DB):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self.db
        with db.ensure_autocommit_on():
            db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            if column not in db[table].columns_dict:
                try:
                    with db.ensure_autocommit_on():
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")  # names from the constant above
                except sqlite3.OperationalError as e:
                    if "duplicate column" not in str(e):  # another process added it first
                        raise

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection (foreign keys enforced)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(self.path)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self):
        """The one write path: a transaction that takes the write lock first
        (BEGIN IMMEDIATE), so a read-check-write inside it sees no other
        writer and can never hit a 'database is locked' upgrade failure; a
        busy lock is waited for (busy_timeout). Everything inside commits
        together or, on any exception, not at all. Nested, it is a savepoint."""
        db = self.db
        if db.conn.in_transaction:
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
        """Close this thread's connection (a later call opens a new one)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _rows(self, sql: str, params=()) -> list[dict]:
        return [_decode(dict(r)) for r in self.db.query(sql, params)]

    def _one(self, sql: str, params=()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _insert(self, table: str, row: dict) -> int:
        with self.transaction():
            return self.db[table].insert(_encode(row)).last_rowid

    # -- runs -----------------------------------------------------------------
    def create_run(self, config: dict, *, parent_run: int | None = None,
                   replay_schedule: dict | None = None) -> int:
        """Insert a run from its resolved config; returns the run id."""
        with self.transaction():
            run_id = self._insert("runs", {
                "name": config["name"], "config": config, "policy": config["policy"], "status": "created",
                "total_steps": config["train"]["steps"], "parent_run": parent_run,
                "replay_schedule": replay_schedule, "created_at": time.time()})
            self.log_event(run_id, "run_created", f"run {run_id} ({config['name']}) created")
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
        """Set fields of a run (RUN_FIELDS); a status outside RUN_STATES or an
        unknown field is refused with StoreError and nothing changes."""
        _check_fields(fields, RUN_FIELDS, "run")
        if "status" in fields and fields["status"] not in RUN_STATES:
            raise StoreError(f"unknown run status {fields['status']!r}")
        with self.transaction():
            self.run(run_id)
            self.db["runs"].update(run_id, _encode(fields))

    def heartbeat(self, run_id: int, **fields) -> None:
        """Record the worker's sign of life (and progress fields). Shown by the
        dashboard; who owns a run is answered by its lock (backend/worker.py)."""
        self.update_run(run_id, heartbeat=time.time(), **fields)

    def record_policy(self, run_id: int, policy: str, *, by: str) -> None:
        """Store a run's (already checked) approval policy with an audit event."""
        with self.transaction():
            before = self.run(run_id)["policy"]
            self.update_run(run_id, policy=policy)
            self.log_event(run_id, "policy", f"policy {before} -> {policy}", actor=by,
                           before={"policy": before}, after={"policy": policy})

    # -- domains and skills ---------------------------------------------------
    def set_domains(self, run_id: int, domains: list[dict]) -> None:
        """Replace the run's domains (name, source, skills, size_tokens)."""
        rows = [_encode({**d, "run_id": run_id, "skills": d.get("skills", [])}) for d in domains]
        with self.transaction():
            self.db.execute("DELETE FROM domains WHERE run_id = ?", (run_id,))
            self.db["domains"].insert_all(rows)

    def domains(self, run_id: int) -> list[dict]:
        """The run's domains in the order they were set."""
        return self._rows("SELECT * FROM domains WHERE run_id = ? ORDER BY rowid", (run_id,))

    def set_skills(self, run_id: int, skills: list[dict]) -> None:
        """Replace the run's skills (steer and held-out, with their domains and tasks)."""
        rows = [_encode({**s, "run_id": run_id}) for s in skills]
        with self.transaction():
            self.db.execute("DELETE FROM skills WHERE run_id = ?", (run_id,))
            self.db["skills"].insert_all(rows)

    def skills(self, run_id: int) -> list[dict]:
        """The run's skills in the order they were set."""
        return self._rows("SELECT * FROM skills WHERE run_id = ? ORDER BY rowid", (run_id,))

    # -- affinity pins and the objective --------------------------------------
    def set_pin(self, run_id: int, skill: str, domain: str, pinned: bool | None, *, by: str,
                reason: str = "") -> None:
        """Pin a (skill, domain) link on (True) or off (False), or clear its
        pin (None), with an audit event `pin` (before / after: the pin). The
        names are checked by backend.decisions.pin_link."""
        with self.transaction():
            old = self._one("SELECT pinned FROM affinity_pins WHERE run_id = ? AND skill = ? AND domain = ?",
                            (run_id, skill, domain))
            before = None if old is None else bool(old["pinned"])
            if pinned is None:
                self.db.execute("DELETE FROM affinity_pins WHERE run_id = ? AND skill = ? AND domain = ?",
                                (run_id, skill, domain))
            else:
                self.db["affinity_pins"].insert({"run_id": run_id, "skill": skill, "domain": domain,
                                                 "pinned": int(pinned), "by": by, "reason": reason,
                                                 "ts": time.time()}, replace=True)
            word = {True: "on", False: "off", None: "cleared"}
            self.log_event(run_id, "pin", f"link {skill} <- {domain} pinned {word[pinned]}"
                           + (f": {reason}" if reason else ""), actor=by,
                           before={"skill": skill, "domain": domain, "pinned": before},
                           after={"skill": skill, "domain": domain, "pinned": pinned})

    def pins(self, run_id: int) -> dict[tuple[str, str], bool]:
        """(skill, domain) -> True (pinned on) / False (pinned off); links
        without a pin are absent."""
        return {(r["skill"], r["domain"]): bool(r["pinned"]) for r in self.pin_rows(run_id)}

    def pin_rows(self, run_id: int) -> list[dict]:
        """The run's pins with who set them, when and why, by skill and domain."""
        return self._rows("SELECT * FROM affinity_pins WHERE run_id = ? ORDER BY skill, domain", (run_id,))

    def add_objective(self, run_id: int, objective: dict, *, by: str, reason: str = "") -> int:
        """Store a person's (already validated) objective for a running run,
        with an audit event `objective` (before: the one it replaces, None
        for the config's); returns its id. The newest applies."""
        with self.transaction():
            before = self.objective(run_id)
            oid = self._insert("objectives", {"run_id": run_id, "objective": objective, "by": by,
                                              "reason": reason, "ts": time.time()})
            self.log_event(run_id, "objective", f"objective {oid} set" + (f": {reason}" if reason else ""),
                           actor=by, before=before, after=objective)
        return oid

    def objective(self, run_id: int) -> dict | None:
        """The newest objective a person saved for the run, or None (the
        config's applies)."""
        row = self._one("SELECT objective FROM objectives WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,))
        return None if row is None else row["objective"]

    # -- checkpoints ----------------------------------------------------------
    def add_checkpoint(self, run_id: int, *, step: int, tokens_seen: int, train_loss: float | None,
                       wall_time: float, tokens_per_s: float | None, path: str,
                       weights: dict, domain_usage: dict | None = None) -> None:
        """Record a checkpoint whose files are complete on disk (idempotent:
        a second call for the same step only updates its path and
        domain_usage: {domain: {"tokens", "epochs", "train_tokens"}} trained
        up to it)."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO checkpoints (run_id, step, tokens_seen, train_loss, wall_time, "
                "tokens_per_s, path, weights, domain_usage, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, step) DO UPDATE SET path = excluded.path, "
                "domain_usage = coalesce(excluded.domain_usage, domain_usage)",
                (run_id, step, tokens_seen, train_loss, wall_time, tokens_per_s, path,
                 _dumps(weights), _dumps(domain_usage), time.time()),
            )

    def mark_checkpoint(self, run_id: int, step: int, **flags: bool) -> None:
        """Set `evaluated` / `boundary_done` on a checkpoint."""
        _check_fields(flags, CHECKPOINT_FLAGS, "checkpoint")
        with self.transaction():
            self.db["checkpoints"].update((run_id, step), {k: int(v) for k, v in flags.items()})

    def checkpoints(self, run_id: int) -> list[dict]:
        """The run's checkpoints by step."""
        return self._rows("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step", (run_id,))

    def checkpoint(self, run_id: int, step: int) -> dict | None:
        """One checkpoint, or None when none was taken at `step`."""
        return self._one("SELECT * FROM checkpoints WHERE run_id = ? AND step = ?", (run_id, step))

    # -- measurements ---------------------------------------------------------
    def add_measurements(self, run_id: int, rows: list[dict]) -> None:
        """Insert or replace measurements (keyed by step, task, metric, facets)."""
        now = time.time()
        full = [{"prompt_variant": "", "decoding": "", "scorer": "", "stderr": None, "n": None,
                 "skill": None, "domain": None, **r, "run_id": run_id, "created_at": now} for r in rows]
        with self.transaction():
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
        with self.transaction():
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

    def record_affinity(self, run_id: int, step: int, rows: list[dict]) -> None:
        """Replace the affinity estimate of checkpoint `step` with `rows`
        ({skill, domain, mean, lo, hi, prior, source}, backend/affinity.py),
        in one transaction."""
        keys = ("skill", "domain", "mean", "lo", "hi", "prior", "source")
        full = [{**{k: r[k] for k in keys}, "run_id": run_id, "step": step} for r in rows]
        with self.transaction():
            self.db.execute("DELETE FROM affinity WHERE run_id = ? AND step = ?", [run_id, step])
            if full:
                self.db["affinity"].insert_all(full)

    def affinity(self, run_id: int, step: int | None = None) -> list[dict]:
        """The affinity rows of a run at checkpoint `step` (None: every
        checkpoint), by step, skill and domain."""
        return self._skill_domain_rows("affinity", run_id, step)

    def _skill_domain_rows(self, table: str, run_id: int, step: int | None) -> list[dict]:
        """Rows of a (run, step, skill, domain) table (affinity, alignment) at
        checkpoint `step` (None: every checkpoint), by step, skill and domain."""
        sql, params = f"SELECT * FROM {table} WHERE run_id = ?", [run_id]
        if step is not None:
            sql, params = sql + " AND step = ?", params + [step]
        return self._rows(sql + " ORDER BY step, skill, domain", params)

    def add_alignment(self, run_id: int, step: int, rows: list[dict]) -> None:
        """Replace the gradient alignment measured at checkpoint `step` with
        `rows` ({skill, domain, value, stderr, n},
        backend/evaluation/alignment.py), in one transaction."""
        keys = ("skill", "domain", "value", "stderr", "n")
        full = [{**{k: r.get(k) for k in keys}, "run_id": run_id, "step": step} for r in rows]
        with self.transaction():
            self.db.execute("DELETE FROM alignment WHERE run_id = ? AND step = ?", [run_id, step])
            if full:
                self.db["alignment"].insert_all(full)

    def alignment(self, run_id: int, step: int | None = None) -> list[dict]:
        """The gradient-alignment rows of a run at checkpoint `step` (None:
        every checkpoint), by step, skill and domain."""
        return self._skill_domain_rows("alignment", run_id, step)

    def add_forecast_errors(self, run_id: int, rows: list[dict]) -> None:
        """Insert or replace scored forecasts (one row per proposal and skill),
        as backend/forecast_errors.py computes them."""
        full = [{**r, "run_id": run_id} for r in rows]
        with self.transaction():
            self.db["forecast_errors"].insert_all(full, replace=True)

    def forecast_errors(self, run_id: int, skill: str | None = None, since_step: int | None = None) -> list[dict]:
        """Every scored forecast of the run, by step and skill; optionally
        one skill, or only those scored at steps >= since_step."""
        sql, params = "SELECT * FROM forecast_errors WHERE run_id = ?", [run_id]
        if since_step is not None:
            sql, params = sql + " AND step >= ?", params + [since_step]
        if skill:
            sql, params = sql + " AND skill = ?", params + [skill]
        return self._rows(sql + " ORDER BY step, skill", params)

    def add_train_log(self, run_id: int, rows: list[dict]) -> None:
        """Insert or replace training-curve rows (TRAIN_LOG_KEYS; one per
        window of steps, keyed by its last step), so a resumed worker that
        retrains a stretch overwrites what it logged before."""
        full = [{**{k: r.get(k) for k in TRAIN_LOG_KEYS}, "run_id": run_id} for r in rows]
        with self.transaction():
            self.db["train_log"].insert_all(full, replace=True)

    def train_log(self, run_id: int, since_step: int | None = None) -> list[dict]:
        """The run's training-curve rows by step (step, tokens_seen, loss,
        lr, grad_norm, tokens_per_s); optionally only steps >= since_step."""
        sql, params = ("SELECT step, tokens_seen, loss, lr, grad_norm, tokens_per_s FROM train_log "
                       "WHERE run_id = ?", [run_id])
        if since_step is not None:
            sql, params = sql + " AND step >= ?", params + [since_step]
        return self._rows(sql + " ORDER BY step", params)

    def add_samples(self, run_id: int, step: int, rows: list[dict]) -> None:
        """Per-item results of one checkpoint (which items fail)."""
        full = [{**r, "run_id": run_id, "step": step} for r in rows]
        with self.transaction():
            self.db["samples"].insert_all(full, replace=True)

    def samples(self, run_id: int, step: int, task: str | None = None) -> list[dict]:
        """Per-item results at one checkpoint, optionally of one task."""
        sql, params = "SELECT * FROM samples WHERE run_id = ? AND step = ?", [run_id, step]
        if task:
            sql, params = sql + " AND task = ?", params + [task]
        return self._rows(sql + " ORDER BY task, doc_id", params)

    # -- proposals ------------------------------------------------------------
    def add_proposal(self, run_id: int, *, step: int, strategy: str, current_weights: dict,
                     weights: dict, rationale: dict, forecast: dict) -> int:
        """Store a pending proposal; older pending ones become superseded.
        Idempotent per (run, step, strategy) so a resumed worker adds none twice."""
        with self.transaction():
            old = self._one("SELECT id FROM proposals WHERE run_id = ? AND step = ? AND strategy = ?",
                            (run_id, step, strategy))
            if old:
                return old["id"]
            for p in self.proposals(run_id, "pending"):
                self._set_status(p, "superseded", "a newer proposal arrived")
            pid = self._insert("proposals", {
                "run_id": run_id, "step": step, "strategy": strategy, "current_weights": current_weights,
                "weights": weights, "rationale": rationale, "forecast": forecast, "status": "pending",
                "created_at": time.time()})
            self.log_event(run_id, "proposed", f"proposal {pid} by {strategy} at step {step}",
                           proposal_id=pid, before=current_weights, after=weights)
        return pid

    def add_manual_proposal(self, run_id: int, *, step: int, current_weights: dict, weights: dict,
                            rationale: dict, by: str, reason: str | None = None) -> int:
        """Store a person's (already validated) mixture as an approved
        `manual` proposal with its audit event; returns its id."""
        now = time.time()
        with self.transaction():
            pid = self._insert("proposals", {
                "run_id": run_id, "step": step, "strategy": "manual", "current_weights": current_weights,
                "weights": weights, "rationale": rationale, "forecast": {}, "status": "approved",
                "decision": "approved", "decided_by": by, "decided_at": now, "decision_reason": reason,
                "final_weights": weights, "created_at": now})
            self.log_event(run_id, "manual", f"manual mixture (proposal {pid})", actor=by,
                           proposal_id=pid, before=current_weights, after=weights)
        return pid

    def proposal(self, proposal_id: int) -> dict:
        """One proposal; NotFound when there is none."""
        row = self._one("SELECT * FROM proposals WHERE id = ?", (proposal_id,))
        if row is None:
            raise NotFound(f"no proposal {proposal_id}")
        return row

    def proposals(self, run_id: int, status: str | None = None) -> list[dict]:
        """The run's proposals by id, optionally of one status."""
        sql, params = "SELECT * FROM proposals WHERE run_id = ?", [run_id]
        if status:
            sql, params = sql + " AND status = ?", params + [status]
        return self._rows(sql + " ORDER BY id", params)

    def update_proposal(self, proposal_id: int, **fields) -> dict:
        """Set decision fields (DECISION_FIELDS) of a proposal and bump its
        version; returns it updated. Callers check the rule first, inside
        `transaction()` (backend/decisions.py)."""
        _check_fields(fields, DECISION_FIELDS, "proposal")
        if "status" in fields and fields["status"] not in PROPOSAL_STATES:
            raise StoreError(f"unknown proposal status {fields['status']!r}")
        with self.transaction():
            version = self.proposal(proposal_id)["version"]
            self.db["proposals"].update(proposal_id, _encode({**fields, "version": version + 1}))
        return self.proposal(proposal_id)

    def expire_open(self, run_id: int, why: str) -> list[int]:
        """A finished run has no checkpoint left to apply anything at: its
        pending proposals, and approved or edited ones never applied, become
        `expired` with an event saying why. Returns their ids."""
        with self.transaction():
            open_ = [p for p in self.proposals(run_id) if p["status"] in ("pending", "approved", "edited")]
            for p in open_:
                self._set_status(p, "expired", why)
        return [p["id"] for p in open_]

    def _set_status(self, p: dict, status: str, why: str, **fields) -> None:
        """Move a proposal to superseded (or another state) with an event saying why."""
        self.db["proposals"].update(p["id"], {"status": status, "version": p["version"] + 1, **fields})
        self.log_event(p["run_id"], status, f"proposal {p['id']} {status}: {why}", proposal_id=p["id"])

    def apply_approved(self, run_id: int, *, step: int, tokens_at: int) -> dict | None:
        """At checkpoint `step`: write the schedule segment that trains from
        `step` on, and return the proposal that now owns it (None when no
        approved or edited proposal is waiting and none owns it).

        The only writer of a boundary's row, by one rule: among the waiting
        approved/edited proposals and the one already applied at this same
        boundary (a boundary is settled until training leaves it, so a
        resumed worker or a second call may reconsider it), a person's
        decision beats the policy's (`decided_by == "auto"`), and within
        each kind the newest decision wins. So a manual mixture or an edit
        made before the boundary beats the auto-approval of the proposal made
        at that boundary. Every loser is marked superseded with an event
        saying why; a proposal displaced from the row loses `applied`, so
        nothing is reported applied that did not train."""
        with self.transaction():
            ready = self._rows(
                "SELECT * FROM proposals WHERE run_id = ? AND status IN ('approved', 'edited')", (run_id,))
            seg = self._one("SELECT * FROM schedule WHERE run_id = ? AND from_step = ?", (run_id, step))
            holder = None
            if seg is not None and seg["proposal_id"] is not None:
                holder = self.proposal(seg["proposal_id"])
                if holder["status"] != "applied" or holder["applied_step"] != step:
                    holder = None
            candidates = ready + ([holder] if holder else [])
            if not candidates:
                return None
            winner = max(candidates, key=lambda p: (p["decided_by"] != AUTO, p["decided_at"] or 0, p["id"]))
            person = winner["decided_by"] != AUTO
            for p in candidates:
                if p is winner:
                    continue
                why = (f"a person's decision (proposal {winner['id']}) applies at step {step} instead"
                       if person and p["decided_by"] == AUTO else f"superseded by proposal {winner['id']}")
                if p is holder:
                    why = f"it was applied at step {step}, but trained nothing: {why}"
                self._set_status(p, "superseded", why, applied_step=None)
            if winner is holder:
                return self.proposal(winner["id"])
            self.db["proposals"].update(winner["id"], {"status": "applied", "applied_step": step,
                                                       "version": winner["version"] + 1})
            source = "manual" if winner["strategy"] == "manual" else "proposal"
            self.db["schedule"].insert(_encode({
                "run_id": run_id, "from_step": step, "tokens_at": tokens_at, "weights": winner["final_weights"],
                "source": source, "proposal_id": winner["id"], "decided_by": winner["decided_by"],
                "created_at": time.time()}), replace=True)
            self.log_event(run_id, "applied", f"proposal {winner['id']} applied at step {step}",
                           actor="worker", proposal_id=winner["id"], after=winner["final_weights"])
        return self.proposal(winner["id"])

    # -- schedule -------------------------------------------------------------
    def add_segment(self, run_id: int, *, from_step: int, tokens_at: int, weights: dict,
                    source: str, proposal_id: int | None = None, decided_by: str | None = None) -> None:
        """A segment that no decision owns: the initial mixture, or one read
        from a replayed schedule. Idempotent; a different segment at a step
        that already has one is refused (decided segments are written by
        apply_approved alone)."""
        if source not in SEGMENT_SOURCES:
            raise StoreError(f"unknown segment source {source!r} (sources: {', '.join(SEGMENT_SOURCES)})")
        row = {"run_id": run_id, "from_step": from_step, "tokens_at": tokens_at, "weights": weights,
               "source": source, "proposal_id": proposal_id, "decided_by": decided_by}
        with self.transaction():
            old = self._one("SELECT * FROM schedule WHERE run_id = ? AND from_step = ?", (run_id, from_step))
            if old is not None:
                if {k: old[k] for k in row} != row:
                    raise StoreError(f"run {run_id} already has a {old['source']} segment at step {from_step}")
                return
            self._insert("schedule", {**row, "created_at": time.time()})

    def schedule(self, run_id: int) -> list[dict]:
        """The segments trained (or to train), by from_step."""
        return self._rows("SELECT * FROM schedule WHERE run_id = ? ORDER BY from_step", (run_id,))

    def current_weights(self, run_id: int) -> dict[str, float]:
        """The weights of the run's latest segment; StoreError before the first."""
        row = self._one("SELECT weights FROM schedule WHERE run_id = ? ORDER BY from_step DESC LIMIT 1",
                        (run_id,))
        if row is None:
            raise StoreError(f"run {run_id} has no mixture yet")
        return row["weights"]

    def weights_at(self, run_id: int, step: int) -> dict[str, float]:
        """The weights of the segment in force at `step` (the latest that
        starts at or before it); StoreError before the first."""
        row = self._one("SELECT weights FROM schedule WHERE run_id = ? AND from_step <= ? "
                        "ORDER BY from_step DESC LIMIT 1", (run_id, step))
        if row is None:
            raise StoreError(f"run {run_id} has no mixture at step {step}")
        return row["weights"]

    # -- events and commands --------------------------------------------------
    def log_event(self, run_id: int | None, kind: str, message: str, *, actor: str | None = None,
                  proposal_id: int | None = None, before=None, after=None) -> int:
        """Append an audit event (before / after are JSON); returns its id."""
        return self._insert("events", {
            "run_id": run_id, "ts": time.time(), "kind": kind, "actor": actor, "proposal_id": proposal_id,
            "before": before, "after": after, "message": message})

    def events(self, run_id: int, kind: str | tuple[str, ...] | None = None) -> list[dict]:
        """The run's events, oldest first; optionally of one kind (or several)."""
        sql, params = "SELECT * FROM events WHERE run_id = ?", [run_id]
        if kind:
            kinds = (kind,) if isinstance(kind, str) else tuple(kind)
            sql = sql + f" AND kind IN ({', '.join('?' * len(kinds))})"
            params += list(kinds)
        return self._rows(sql + " ORDER BY id", params)

    def add_command(self, run_id: int, command: str, *, by: str) -> int:
        """Queue an (already checked) command for the run's worker, with an
        audit event; returns its id."""
        with self.transaction():
            cid = self._insert("commands", {"run_id": run_id, "command": command, "issued_by": by,
                                            "created_at": time.time()})
            self.log_event(run_id, "command", f"{command} requested", actor=by)
        return cid

    def pending_commands(self, run_id: int) -> list[dict]:
        """Commands not yet taken, oldest first (id, command, issued_by, created_at)."""
        return self._rows("SELECT * FROM commands WHERE run_id = ? AND done_at IS NULL ORDER BY id", (run_id,))

    def take_commands(self, run_id: int) -> list[str]:
        """The worker's side: pending commands, oldest first, marked done."""
        with self.transaction():
            rows = self.pending_commands(run_id)
            now = time.time()
            for r in rows:
                self.db["commands"].update(r["id"], {"done_at": now})
        return [r["command"] for r in rows]
