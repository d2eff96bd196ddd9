"""spottune submit SWEEP.yaml [--detach] [--run-id NAME [--stay]]"""
from __future__ import annotations

import argparse
import re

from orchestrator.commands.common import positive_number

HELP = "plan a sweep, start its controller, and follow it (trial state, offer, step, loss, $, preemptions)"
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def run_id_argument(text: str) -> str:
    """argparse type: a run id (it names directories and Kubernetes labels)."""
    if not RUN_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a run id; accepted: 1-63 letters, digits, '_', '.', '-', "
                                         "starting with a letter or digit")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML (see examples/sweep_demo.yaml)")
    parser.add_argument("--detach", action="store_true", help="print the plan and the run id, then return")
    parser.add_argument("--state-dir", help="where runs and spottune.db live (default: $SPOTTUNE_STATE_DIR or ./runs)")
    parser.add_argument("--interval", type=positive_number, default=5.0, help="seconds between progress tables")
    parser.add_argument("--run-id", type=run_id_argument,
                        help="submit the sweep once, as run NAME: when the state already holds NAME, resume it "
                             "(trials re-attach or continue from their checkpoints) or, once it has finished, do "
                             "nothing and exit 0 — what a restarted controller pod runs (helm/spottune)")
    parser.add_argument("--stay", action="store_true",
                        help="when the run has ended, wait for SIGTERM instead of exiting, so that a Deployment "
                             "does not restart the container over and over")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from orchestrator.run.daemon import spawn_controller
    from orchestrator.run.layout import RunLayout, default_state_dir
    from orchestrator.views.plan_output import render_plan
    from orchestrator.views.progress import follow
    from orchestrator.run.submission import prepare, register

    state_dir = Path(args.state_dir).resolve() if args.state_dir else default_state_dir()
    if args.stay:  # a pod's end: as PID 1 of a container, nothing would end it before the grace period's SIGKILL
        import signal
        import sys

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.run_id is not None and _known_run(state_dir, args.run_id):
        return _stay(args, _continue(args, state_dir))
    prepared = prepare(Path(args.spec))
    print(render_plan(prepared.spec.name, prepared.trials, prepared.plan))
    store, run_id = register(prepared, state_dir, args.run_id)
    layout = RunLayout(state_dir, run_id)
    pid = spawn_controller(layout)
    print(f"run {run_id}: {len(prepared.trials)} trial(s), controller PID {pid}, state {store.path}")
    if args.detach:
        print(f"follow with: spottune status {run_id}   (logs: spottune logs {run_id}/TRIAL)")
        return 0
    return _stay(args, follow(store, layout, args.interval))


def _known_run(state_dir, run_id: str) -> bool:  # type: ignore[no-untyped-def]
    from orchestrator.run.state import DB_NAME, StateStore

    if not (state_dir / DB_NAME).is_file():
        return False
    return any(run.id == run_id for run in StateStore(state_dir).runs())


def _continue(args: argparse.Namespace, state_dir) -> int:  # type: ignore[no-untyped-def]
    """Run `args.run_id` exists: follow its live controller, restart a dead one, or say it has finished."""
    from orchestrator.run.controller import controller_pid
    from orchestrator.run.daemon import spawn_controller
    from orchestrator.run.layout import RunLayout
    from orchestrator.run.state import StateStore
    from orchestrator.views.progress import follow

    store = StateStore(state_dir)
    run_id = args.run_id
    run = store.run(run_id)
    layout = RunLayout(state_dir, run_id)
    if run.finished is not None or all(trial.terminal for trial in store.trials(run_id)):
        print(f"run {run_id} has finished; nothing to submit (`spottune report {run_id}`)")
        return 0
    _warn_if_changed(args.spec, run.spec, run_id)
    pid = controller_pid(layout)
    if pid is None:
        pid = spawn_controller(layout)
        print(f"run {run_id}: controller PID {pid} resumed it")
    else:
        print(f"run {run_id}: already driven by controller PID {pid}; following it")
    if args.detach:
        return 0
    return follow(store, layout, args.interval)


def _warn_if_changed(path: str, submitted: dict, run_id: str) -> None:
    """Say so when the sweep file no longer is what run_id was submitted with (the run goes on as submitted)."""
    import sys
    from pathlib import Path

    from orchestrator.errors import SpecError
    from orchestrator.sweep.spec import load_spec

    try:
        spec, _ = load_spec(Path(path))
    except SpecError as error:
        print(f"warning: {error}; run {run_id} goes on as it was submitted", file=sys.stderr)
        return
    spec = spec.model_copy(update={"storage": spec.storage.absolute(Path.cwd())})
    if spec.model_dump(mode="json") != submitted:
        print(f"warning: {path} changed since run {run_id} was submitted; the run goes on as it was submitted "
              f"(a new --run-id submits the new sweep)", file=sys.stderr)


def _stay(args: argparse.Namespace, status: int) -> int:
    """With --stay, wait for SIGTERM (a pod's end) once the run is over; the exit status is the run's."""
    if not args.stay:
        return status
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(status))
    print("run over; waiting for SIGTERM (--stay)", flush=True)
    while True:
        signal.pause()
