"""Arguments and look-ups shared by the run commands (standard library only at import time)."""
from __future__ import annotations

import argparse


def add_offer_filters(parser: argparse.ArgumentParser, providers_default: str) -> None:
    """--gpu, --provider and --spot/--on-demand: which catalog offers a command looks at."""
    parser.add_argument("--gpu", action="append", help="only these GPU types (repeat or comma-separate)")
    parser.add_argument("--provider", action="append", help=f"only these providers (default: {providers_default})")
    market = parser.add_mutually_exclusive_group()
    market.add_argument("--spot", action="store_const", const="spot", dest="market", help="spot offers only")
    market.add_argument("--on-demand", action="store_const", const="on-demand", dest="market",
                        help="on-demand offers only")


def _number(text: str, kind: type, low: float, inclusive: bool) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if value != value or value in (float("inf"), float("-inf")) or value < low or (value == low and not inclusive):
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; accepted: a finite number {bound}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return int(_number(text, int, 1, inclusive=True))


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, 0, inclusive=False)


def non_negative_number(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, 0, inclusive=True)


def comma_list(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated flag values as one list; None when the flag was not given."""
    if not values:
        return None
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", help="where runs and spottune.db live (default: $SPOTTUNE_STATE_DIR or ./runs)")


def latest_run(store) -> str:  # type: ignore[no-untyped-def]
    """The id of the most recent run, or a one-line error when the database holds none."""
    from orchestrator.errors import SpecError

    runs = store.runs()
    if not runs:
        raise SpecError(f"no runs in {store.path} yet; submit a sweep first (spottune submit SWEEP.yaml)")
    return runs[-1].id


def open_state(args: argparse.Namespace):
    """(StateStore, state_dir) for the command's --state-dir; a missing database is a one-line error."""
    from pathlib import Path

    from orchestrator.errors import SpecError
    from orchestrator.run.layout import default_state_dir
    from orchestrator.run.state import DB_NAME, StateStore

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
