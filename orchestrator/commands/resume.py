"""spottune resume RUN [--retry-failed] [--detach], or spottune resume --from STORAGE/RUN (re-attach a run)"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.commands.common import add_state_dir, positive_number

HELP = "restart the controller of an interrupted run; trials continue from their last committed checkpoints"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run id (not needed with --from)")
    parser.add_argument("--from", dest="source", metavar="URI",
                        help="re-attach a run from its storage prefix (e.g. s3://bucket/runs/RUN_ID) when the state "
                             "database lost it; S3 endpoints come from AWS_ENDPOINT_URL_S3")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also relaunch failed trials (once their cause is fixed), from their last checkpoints")
    parser.add_argument("--detach", action="store_true", help="start the controller and return")
    parser.add_argument("--interval", type=positive_number, default=5.0, help="seconds between progress tables")
    add_state_dir(parser)


def run(args: argparse.Namespace) -> int:
    from orchestrator.commands.common import open_state
    from orchestrator.run.controller import controller_pid
    from orchestrator.run.daemon import spawn_controller
    from orchestrator.errors import SpecError
    from orchestrator.run.layout import RunLayout
    from orchestrator.views.progress import follow

    if args.source is not None:
        from orchestrator.run.layout import default_state_dir
        from orchestrator.run.mirror import read_mirror
        from orchestrator.run.state import StateStore

        snapshot = read_mirror(args.source)
        if args.run not in (None, snapshot["run"]["id"]):
            raise SpecError(f"--from: {args.source} holds run {snapshot['run']['id']}, not {args.run}")
        state_dir = Path(args.state_dir).resolve() if args.state_dir else default_state_dir()
        store = StateStore(state_dir)
        run_id = store.import_run(snapshot)
        args.run = run_id
        print(f"run {run_id}: re-attached from {args.source}")
    elif args.run is None:
        raise SpecError("resume: give a run id, or --from STORAGE_PREFIX to re-attach a run from its storage")
    else:
        store, state_dir = open_state(args)
    store.run(args.run)
    layout = RunLayout(state_dir, args.run)
    running = controller_pid(layout)
    if running is not None:
        raise SpecError(
            f"run {args.run} is already driven by controller PID {running}; see `spottune status {args.run}`"
        )
    if args.retry_failed:
        retried = store.retry_failed(args.run)
        if retried:
            print(f"run {args.run}: retrying {len(retried)} failed trial(s): {', '.join(retried)}")
    if all(trial.terminal for trial in store.trials(args.run)):
        failed = sum(trial.state == "failed" for trial in store.trials(args.run))
        hint = f" ({failed} failed: `spottune resume {args.run} --retry-failed` relaunches them)" if failed else ""
        print(f"run {args.run}: every trial has finished; nothing to resume{hint}")
        return 0
    pid = spawn_controller(layout)
    print(f"run {args.run}: controller PID {pid} resumed it")
    if args.detach:
        return 0
    return follow(store, layout, args.interval)
