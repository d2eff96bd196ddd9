"""Run state in SQLite (WAL): runs, trials, an append-only event log and per-step metrics.

Every trial state change is an event row (time, attempt, node, offer, price, step); the trial row only
caches the latest values for display. The cost ledger is computed from events (orchestrator/ledger.py),
so a restarted controller recovers everything from this file and the object store.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from orchestrator.errors import SpecError

DB_NAME = "spottune.db"
BUSY_TIMEOUT_S = 30.0
TERMINAL = ("succeeded", "failed", "cancelled", "stopped")  # stopped: by early stopping, checkpoints kept
TRANSITIONS = {
    "pending": {"provisioning", "failed", "cancelled"},
    "provisioning": {"running", "preempted", "pending", "failed", "cancelled"},
    "running": {"running", "preempted", "pending", "succeeded", "failed", "cancelled", "stopped"},
    "preempted": {"provisioning", "failed", "cancelled"},
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_path TEXT NOT NULL,
    spec TEXT NOT NULL,
    storage TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    controller_pid INTEGER
);
CREATE TABLE IF NOT EXISTS trials (
    run_id TEXT NOT NULL,
    id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    params TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    preemptions INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER,
    loss REAL,
    eval_loss REAL,
    node TEXT,
    offer TEXT,
    price REAL,
    message TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (run_id, id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    trial_id TEXT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    state TEXT,
    attempt INTEGER,
    node TEXT,
    offer TEXT,
    price REAL,
    step INTEGER,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_trial ON events (run_id, trial_id, seq);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    trial_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    value REAL NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, trial_id, attempt, step, kind)
);
"""


@dataclass
class Event:
    seq: int
    run_id: str
    trial_id: str | None
    time: float
    kind: str
    state: str | None
    attempt: int | None
    node: str | None
    offer: str | None
    price: float | None
    step: int | None
    detail: dict = field(default_factory=dict)


@dataclass
class TrialRow:
    run_id: str
    id: str
    idx: int
    params: dict
    config: dict
    state: str
    attempts: int
    preemptions: int
    errors: int
    step: int
    total_steps: int | None
    loss: float | None
    eval_loss: float | None
    node: str | None
    offer: str | None
    price: float | None
    message: str | None
    cancel_requested: bool
    updated: float

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass
class RunRow:
    id: str
    name: str
    spec_path: str
    spec: dict
    storage: str
    created: float
    finished: float | None
    controller_pid: int | None


def private_file(path: Path) -> None:
    """Create `path` empty when missing; either way make it readable and writable by this user only."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


class StateStore:
    """One SQLite database holding every run under a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.state_dir / DB_NAME
        private_file(self.path)  # SQLite gives the -wal and -shm files the database file's mode
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._set_wal()
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._write() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        self._identity = _file_identity(self.path)

    def missing(self) -> str | None:
        """Why the database file this store opened is no longer at its path (removed or replaced), or None."""
        identity = _file_identity(self.path)
        if identity is None:
            return f"the state database {self.path} was removed"
        if identity != self._identity:
            return f"the state database {self.path} was replaced by another file"
        return None

    def _set_wal(self) -> None:
        """Switch to WAL; the switch needs a moment alone with the file and SQLite does not wait for it itself."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # runs

    def create_run(self, run_id: str, name: str, spec_path: str, spec: dict, storage: str,
                   trials: list[dict]) -> str:
        """Insert a run and its trials (all pending), with a `submitted` event per trial; returns the run's id.

        The id is `run_id`, or `run_id-2`, `-3`... when taken: chosen inside the write transaction, so
        concurrent submissions never pick the same one.
        """
        now = time.time()
        with self._write() as db:
            taken = {row["id"] for row in db.execute("SELECT id FROM runs WHERE id = ? OR id LIKE ?",
                                                     (run_id, f"{run_id}-%"))}
            base, counter = run_id, 1
            while run_id in taken:
                counter += 1
                run_id = f"{base}-{counter}"
            db.execute(
                "INSERT INTO runs (id, name, spec_path, spec, storage, created) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, name, spec_path, json.dumps(spec), storage, now),
            )
            for trial in trials:
                db.execute(
                    "INSERT INTO trials (run_id, id, idx, params, config, state, total_steps, updated) "
                    "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (run_id, trial["id"], trial["index"], json.dumps(trial["params"]), json.dumps(trial["config"]),
                     trial.get("total_steps"), now),
                )
                self._insert_event(db, run_id, trial["id"], "submitted", "pending", now=now)
        return run_id

    def run(self, run_id: str) -> RunRow:
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            known = [r["id"] for r in self._db.execute("SELECT id FROM runs ORDER BY created DESC LIMIT 5")]
            hint = f"; recent runs: {', '.join(known)}" if known else "; no runs in this state directory"
            raise SpecError(f"run {run_id!r} not found in {self.path}{hint}")
        return RunRow(row["id"], row["name"], row["spec_path"], json.loads(row["spec"]), row["storage"],
                      row["created"], row["finished"], row["controller_pid"])

    def runs(self) -> list[RunRow]:
        rows = self._db.execute("SELECT id FROM runs ORDER BY created").fetchall()
        return [self.run(row["id"]) for row in rows]

    def set_controller(self, run_id: str, pid: int | None) -> None:
        with self._write() as db:
            db.execute("UPDATE runs SET controller_pid = ? WHERE id = ?", (pid, run_id))

    def set_finished(self, run_id: str, finished: float | None) -> None:
        with self._write() as db:
            db.execute("UPDATE runs SET finished = ? WHERE id = ?", (finished, run_id))

    # trials

    def trials(self, run_id: str) -> list[TrialRow]:
        rows = self._db.execute("SELECT * FROM trials WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
        return [self._trial(row) for row in rows]

    def trial(self, run_id: str, trial_id: str) -> TrialRow:
        row = self._db.execute("SELECT * FROM trials WHERE run_id = ? AND id = ?", (run_id, trial_id)).fetchone()
        if row is None:
            raise SpecError(f"trial {trial_id!r} not found in run {run_id!r}")
        return self._trial(row)

    def find_trial(self, trial_id: str) -> TrialRow:
        """The trial with this id in the most recent run that has one."""
        row = self._db.execute(
            "SELECT t.* FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.id = ? ORDER BY r.created DESC LIMIT 1",
            (trial_id,),
        ).fetchone()
        if row is None:
            raise SpecError(f"trial {trial_id!r} not found in {self.path}")
        return self._trial(row)

    @staticmethod
    def _trial(row: sqlite3.Row) -> TrialRow:
        return TrialRow(
            row["run_id"], row["id"], row["idx"], json.loads(row["params"]), json.loads(row["config"]),
            row["state"], row["attempts"], row["preemptions"], row["errors"], row["step"], row["total_steps"],
            row["loss"], row["eval_loss"], row["node"], row["offer"], row["price"], row["message"],
            bool(row["cancel_requested"]), row["updated"],
        )

    def update_progress(self, run_id: str, trial_id: str, **values: Any) -> None:
        """Cache display values (step, loss, eval_loss, total_steps) on the trial row."""
        allowed = {"step", "loss", "eval_loss", "total_steps"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"not progress fields: {sorted(unknown)}")
        if not values:
            return
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._write() as db:
            db.execute(
                f"UPDATE trials SET {assignments}, updated = ? WHERE run_id = ? AND id = ?",
                (*values.values(), time.time(), run_id, trial_id),
            )

    def set_trial_params(self, run_id: str, trial_id: str, params: dict, config: dict) -> None:
        """Give a trial the parameters a sequential search (Optuna) chose for it just before its first launch."""
        with self._write() as db:
            db.execute("UPDATE trials SET params = ?, config = ?, updated = ? WHERE run_id = ? AND id = ?",
                       (json.dumps(params), json.dumps(config), time.time(), run_id, trial_id))

    def retry_failed(self, run_id: str) -> list[str]:
        """Send the run's failed trials back to pending with their error count cleared; returns their ids.

        An explicit operator decision (the cause was fixed), recorded as a `retry` event; the trials resume
        from their committed checkpoints like any relaunch.
        """
        now = time.time()
        with self._write() as db:
            failed = db.execute("SELECT id, errors FROM trials WHERE run_id = ? AND state = 'failed' ORDER BY idx",
                                (run_id,)).fetchall()
            for row in failed:
                self._insert_event(db, run_id, row["id"], "retry", "pending", detail={"errors": row["errors"]},
                                   now=now)
                db.execute("UPDATE trials SET state = 'pending', errors = 0, message = NULL, updated = ? "
                           "WHERE run_id = ? AND id = ?", (now, run_id, row["id"]))
            if failed:
                db.execute("UPDATE runs SET finished = NULL WHERE id = ?", (run_id,))
        return [row["id"] for row in failed]

    def export_run(self, run_id: str) -> dict:
        """A run with its trials, events and metrics as plain data (the mirror kept in the run's storage)."""
        run = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if run is None:
            raise SpecError(f"run {run_id!r} not found in {self.path}")
        tables = {name: [dict(row) for row in self._db.execute(f"SELECT * FROM {name} WHERE run_id = ?", (run_id,))]
                  for name in ("trials", "events", "metrics")}
        for event in tables["events"]:
            del event["seq"]
        return {"run": dict(run), **tables}

    def import_run(self, snapshot: dict) -> str:
        """Re-create a run from `export_run`'s data; refused when this database already has the run."""
        run_id = snapshot["run"]["id"]
        with self._write() as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise SpecError(f"run {run_id} is already in {self.path}; resume it with `spottune resume {run_id}`")
            for table, rows in (("runs", [snapshot["run"]]), ("trials", snapshot["trials"]),
                                ("events", snapshot["events"]), ("metrics", snapshot["metrics"])):
                known = {column["name"] for column in db.execute(f"PRAGMA table_info({table})")}
                for row in rows:
                    if not row or set(row) - known:
                        raise SpecError(f"run mirror of {run_id}: {table} row has unknown columns "
                                        f"{sorted(set(row) - known)}; accepted: {sorted(known)}")
                    columns = ", ".join(row)
                    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})",
                               tuple(row.values()))
        return run_id

    def request_cancel(self, run_id: str, trial_id: str | None = None) -> int:
        """Flag non-terminal trials (one, or the whole run) for the controller to cancel; returns how many."""
        query = ("UPDATE trials SET cancel_requested = 1 "
                 "WHERE run_id = ? AND state NOT IN ('succeeded', 'failed', 'cancelled', 'stopped')")
        arguments: tuple = (run_id,)
        if trial_id is not None:
            query += " AND id = ?"
            arguments = (run_id, trial_id)
        with self._write() as db:
            return db.execute(query, arguments).rowcount

    # events

    def record(self, run_id: str, trial_id: str, kind: str, state: str | None = None, *,
               attempt: int | None = None, node: str | None = None, offer: str | None = None,
               price: float | None = None, step: int | None = None, detail: dict | None = None,
               count: str | None = None, message: str | None = None, now: float | None = None) -> None:
        """Append an event; with `state`, also move the trial there (validated) and cache node/offer/price.

        `count` names a counter to increment in the same transaction: attempts, preemptions or errors.
        """
        with self._write() as db:
            current = db.execute(
                "SELECT state FROM trials WHERE run_id = ? AND id = ?", (run_id, trial_id)
            ).fetchone()
            if current is None:
                raise SpecError(f"trial {trial_id!r} not found in run {run_id!r}")
            if state is not None and state != current["state"]:
                if state not in TRANSITIONS.get(current["state"], set()):
                    raise RuntimeError(f"{trial_id}: illegal transition {current['state']} -> {state} ({kind})")
            self._insert_event(db, run_id, trial_id, kind, state, attempt=attempt, node=node, offer=offer,
                               price=price, step=step, detail=detail, now=now)
            sets, values = ["updated = ?"], [now or time.time()]
            if state is not None:
                sets.append("state = ?")
                values.append(state)
            for column, value in (("node", node), ("offer", offer), ("price", price)):
                if value is not None:
                    sets.append(f"{column} = ?")
                    values.append(value)
            if step is not None:
                sets.append("step = ?")
                values.append(step)
            if message is not None:
                sets.append("message = ?")
                values.append(message)
            if count is not None:
                if count not in ("attempts", "preemptions", "errors"):
                    raise ValueError(f"unknown counter {count}")
                sets.append(f"{count} = {count} + 1")
            db.execute(f"UPDATE trials SET {', '.join(sets)} WHERE run_id = ? AND id = ?",
                       (*values, run_id, trial_id))

    @staticmethod
    def _insert_event(db: sqlite3.Connection, run_id: str, trial_id: str | None, kind: str, state: str | None,
                      *, attempt: int | None = None, node: str | None = None, offer: str | None = None,
                      price: float | None = None, step: int | None = None, detail: dict | None = None,
                      now: float | None = None) -> None:
        db.execute(
            "INSERT INTO events (run_id, trial_id, time, kind, state, attempt, node, offer, price, step, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, trial_id, now or time.time(), kind, state, attempt, node, offer, price, step,
             json.dumps(detail or {})),
        )

    def events(self, run_id: str, trial_id: str | None = None, after: int = 0) -> list[Event]:
        query = "SELECT * FROM events WHERE run_id = ? AND seq > ?"
        arguments: tuple = (run_id, after)
        if trial_id is not None:
            query += " AND trial_id = ?"
            arguments = (run_id, after, trial_id)
        rows = self._db.execute(query + " ORDER BY seq", arguments).fetchall()
        return [
            Event(row["seq"], row["run_id"], row["trial_id"], row["time"], row["kind"], row["state"],
                  row["attempt"], row["node"], row["offer"], row["price"], row["step"], json.loads(row["detail"]))
            for row in rows
        ]

    # metrics

    def add_metrics(self, run_id: str, trial_id: str, attempt: int, rows: list[tuple[int, str, float, float]]) -> None:
        """Store (step, kind, value, time) rows; a row already present for the attempt is kept as it was."""
        if not rows:
            return
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO metrics (run_id, trial_id, attempt, step, kind, value, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, trial_id, attempt, step, kind, value, when) for step, kind, value, when in rows],
            )

    def metrics(self, run_id: str, trial_id: str, kind: str = "loss") -> list[tuple[int, int, float, float]]:
        """(attempt, step, value, time) rows of one kind, in attempt then step order."""
        rows = self._db.execute(
            "SELECT attempt, step, value, time FROM metrics WHERE run_id = ? AND trial_id = ? AND kind = ? "
            "ORDER BY attempt, step",
            (run_id, trial_id, kind),
        ).fetchall()
        return [(row["attempt"], row["step"], row["value"], row["time"]) for row in rows]


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino
