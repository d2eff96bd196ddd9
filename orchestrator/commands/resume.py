"""spottune resume RUN [--detach]"""
from __future__ import annotations

import argparse

from orchestrator.commands.common import add_state_dir, positive_number

HELP = "restart the controller of an interrupted run; trials continue from their last committed checkpoints"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run id")
    parser.add_argument("--detach", action="store_true", help="start the controller and return")
    parser.add_argument("--interval", type=positive_number, default=5.0, help="seconds between progress tables")
    add_state_dir(parser)


def run(args: argparse.Namespace) -> int:
    from orchestrator.commands.common import open_state
    from orchestrator.controller import controller_pid
    from orchestrator.daemon import spawn_controller
    from orchestrator.errors import SpecError
    from orchestrator.layout import RunLayout
    from orchestrator.progress import follow

    store, state_dir = open_state(args)
    store.run(args.run)
    layout = RunLayout(state_dir, args.run)
    running = controller_pid(layout)
    if running is not None:
        raise SpecError(
            f"run {args.run} is already driven by controller PID {running}; see `spottune status {args.run}`"
        )
    if all(trial.terminal for trial in store.trials(args.run)):
        print(f"run {args.run}: every trial has finished; nothing to resume")
        return 0
    pid = spawn_controller(layout)
    print(f"run {args.run}: controller PID {pid} resumed it")
    if args.detach:
        return 0
    return follow(store, layout, args.interval)
