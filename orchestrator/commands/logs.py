"""spottune logs TRIAL | RUN/TRIAL [--events]"""
from __future__ import annotations

import argparse

from orchestrator.commands.common import add_state_dir

HELP = "show a trial's log (training output of every attempt, preemptions, errors), or its event timeline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="RUN/TRIAL, or a trial id (from the most recent run that has it)")
    parser.add_argument("--events", action="store_true", help="print the trial's state events instead")
    add_state_dir(parser)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from orchestrator.commands.common import open_state, split_target
    from orchestrator.errors import SpecError
    from orchestrator.run.layout import RunLayout

    store, state_dir = open_state(args)
    run_id, trial_id = split_target(args.target)
    if trial_id is None:
        raise SpecError(f"logs: {args.target!r} names no trial; give RUN/TRIAL or a trial id like t000-1a2b3c")
    trial = store.find_trial(trial_id) if run_id is None else store.trial(run_id, trial_id)
    if args.events:
        for event in store.events(trial.run_id, trial.id):
            stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
            fields = {"state": event.state, "attempt": event.attempt, "node": event.node, "price": event.price,
                      "step": event.step}
            shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            print(f"{stamp} {event.kind:<15} {shown} {json.dumps(event.detail) if event.detail else ''}".rstrip())
        return 0
    path = RunLayout(state_dir, trial.run_id).trial_log(trial.id)
    if not path.is_file():
        print(f"{trial.run_id}/{trial.id}: no log yet ({trial.state})")
        return 0
    print(path.read_text(encoding="utf-8"), end="")
    return 0
