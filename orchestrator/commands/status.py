"""spottune status [RUN] [--json]"""
from __future__ import annotations

import argparse

from orchestrator.commands.common import add_state_dir

HELP = "list runs, or show one run's trials: state, offer, step, loss, $ so far, preemptions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run id (default: list every run)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_state_dir(parser)


def run(args: argparse.Namespace) -> int:
    import json

    from orchestrator.commands.common import open_state
    from orchestrator.run.layout import RunLayout
    from orchestrator.views.progress import status_json, trial_table, trial_views

    store, state_dir = open_state(args)
    if args.run is None:
        runs = [status_json(store, RunLayout(state_dir, run.id)) for run in store.runs()]
        if args.json:
            print(json.dumps([{k: v for k, v in r.items() if k != "trials"} for r in runs], indent=2))
            return 0
        for entry in runs:
            done = sum(1 for trial in entry["trials"] if trial["state"] == "succeeded")
            total = len(entry["trials"])
            print(f"{entry['run']}  {entry['status']:<11}  {done}/{total} succeeded  ${entry['usd']:.6f}")
        return 0
    layout = RunLayout(state_dir, args.run)
    summary = status_json(store, layout)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    controller = f"controller PID {summary['controller_pid']}" if summary["controller_pid"] else "no controller"
    print(f"run {summary['run']}: {summary['status']} ({controller}), ${summary['usd']:.6f} so far")
    print(trial_table(trial_views(store, args.run)))
    return 0
