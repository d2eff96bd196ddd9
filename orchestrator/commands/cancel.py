"""spottune cancel RUN | RUN/TRIAL | TRIAL"""
from __future__ import annotations

import argparse

from orchestrator.commands.common import add_state_dir

HELP = "cancel a whole run or one trial (its node is released; committed checkpoints are kept)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="RUN, RUN/TRIAL, or a trial id (from the most recent run that has it)")
    add_state_dir(parser)


def run(args: argparse.Namespace) -> int:
    from orchestrator.commands.common import open_state, split_target
    from orchestrator.run.controller import controller_pid
    from orchestrator.run.events import EventKind
    from orchestrator.run.layout import RunLayout

    store, state_dir = open_state(args)
    run_id, trial_id = split_target(args.target)
    if run_id is None:
        run_id = store.find_trial(trial_id).run_id
    store.run(run_id)
    if trial_id is not None:
        store.trial(run_id, trial_id)
    flagged = store.request_cancel(run_id, trial_id)
    what = f"{run_id}/{trial_id}" if trial_id else run_id
    if flagged == 0:
        print(f"{what}: nothing to cancel (already finished)")
        return 0
    if controller_pid(RunLayout(state_dir, run_id)) is None:
        for trial in store.trials(run_id):
            if trial.cancel_requested and not trial.terminal:
                store.record(run_id, trial.id, EventKind.CANCELLED, "cancelled", message="cancelled while no controller ran")
        print(f"{what}: cancelled {flagged} trial(s) (no controller was running)")
    else:
        print(f"{what}: cancel requested for {flagged} trial(s); the controller is releasing their nodes")
    return 0
