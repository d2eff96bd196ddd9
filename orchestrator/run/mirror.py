"""A copy of a run's state (run, trials, events, metrics) kept in the run's own storage prefix.

The controller rewrites `{storage}/{run}/run-state.json` as the run's event log grows, so that losing the local
SQLite file loses nothing: `spottune resume --from {storage}/{run}` re-creates the run from it and goes on.
"""
from __future__ import annotations

import json
import time

from cluster.storage import StorageURI, describe_error, open_store, parse_uri, storage_errors
from orchestrator.errors import SpecError
from orchestrator.run.state import StateStore

MIRROR_KEY = "run-state.json"
MIRROR_EVERY_S = 2.0


class RunMirror:
    """Writes the run's snapshot to its storage when events were added, at most every MIRROR_EVERY_S."""

    def __init__(self, state: StateStore, run_id: str, storage: StorageURI, endpoint: str | None) -> None:
        self.state = state
        self.run_id = run_id
        self.store = open_store(storage.child(run_id), endpoint)
        self._written_events = -1
        self._written_at = 0.0
        self.problem: str | None = None

    def sync(self, force: bool = False) -> None:
        """Write the snapshot if it is stale; a storage error is kept in `problem`, never raised."""
        count = len(self.state.events(self.run_id))
        if count == self._written_events or (not force and time.monotonic() - self._written_at < MIRROR_EVERY_S):
            return
        try:
            self.store.write_text(MIRROR_KEY, json.dumps(self.state.export_run(self.run_id)))
        except storage_errors() as error:
            self.problem = describe_error(error)
            return
        self.problem = None
        self._written_events, self._written_at = count, time.monotonic()


def read_mirror(location: str, endpoint: str | None = None) -> dict:
    """The run snapshot mirrored under `location` (the run's storage prefix); one-line errors otherwise."""
    uri = parse_uri(location, field="--from")
    store = open_store(uri, endpoint)
    try:
        text = store.read_text(MIRROR_KEY)
    except storage_errors() as error:
        raise SpecError(f"--from: cannot read {store.describe(MIRROR_KEY)}: {describe_error(error)}") from None
    if text is None:
        raise SpecError(f"--from: {store.describe(MIRROR_KEY)} does not exist; give the run's prefix, "
                        f"e.g. {uri.child('RUN_ID')} under the sweep's storage")
    try:
        snapshot = json.loads(text)
        snapshot["run"]["id"]
    except (ValueError, KeyError, TypeError):
        raise SpecError(f"--from: {store.describe(MIRROR_KEY)} is not a spottune run mirror") from None
    return snapshot
