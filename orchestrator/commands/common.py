"""Arguments and look-ups shared by the run commands (standard library only at import time)."""
from __future__ import annotations

import argparse


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", help="where runs and spottune.db live (default: $SPOTTUNE_STATE_DIR or ./runs)")


def open_state(args: argparse.Namespace):
    """(StateStore, state_dir) for the command's --state-dir; a missing database is a one-line error."""
    from pathlib import Path

    from orchestrator.errors import SpecError
    from orchestrator.layout import default_state_dir
    from orchestrator.state import DB_NAME, StateStore

    state_dir = Path(args.state_dir).resolve() if args.state_dir else default_state_dir()
    if not (state_dir / DB_NAME).is_file():
        raise SpecError(f"no runs in {state_dir} (no {DB_NAME}); pass --state-dir or submit a sweep first")
    return StateStore(state_dir), state_dir


def split_target(target: str) -> tuple[str | None, str | None]:
    """'RUN/TRIAL' -> (RUN, TRIAL); 'tNNN-xxxxxx' -> (None, TRIAL); anything else -> (RUN, None)."""
    import re

    if "/" in target:
        run_id, _, trial_id = target.partition("/")
        return run_id, trial_id
    if re.fullmatch(r"t\d{3}-[0-9a-f]{6}", target):
        return None, target
    return target, None
