"""spottune submit SWEEP.yaml [--detach]"""
from __future__ import annotations

import argparse

from orchestrator.commands.common import positive_number

HELP = "plan a sweep, start its controller, and follow it (trial state, offer, step, loss, $, preemptions)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML (see examples/sweep_demo.yaml)")
    parser.add_argument("--detach", action="store_true", help="print the plan and the run id, then return")
    parser.add_argument("--state-dir", help="where runs and spottune.db live (default: $SPOTTUNE_STATE_DIR or ./runs)")
    parser.add_argument("--interval", type=positive_number, default=5.0, help="seconds between progress tables")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from orchestrator.run.daemon import spawn_controller
    from orchestrator.run.layout import RunLayout, default_state_dir
    from orchestrator.views.plan_output import render_plan
    from orchestrator.views.progress import follow
    from orchestrator.run.submission import prepare, register

    state_dir = Path(args.state_dir).resolve() if args.state_dir else default_state_dir()
    prepared = prepare(Path(args.spec))
    print(render_plan(prepared.spec.name, prepared.trials, prepared.plan))
    store, run_id = register(prepared, state_dir)
    layout = RunLayout(state_dir, run_id)
    pid = spawn_controller(layout)
    print(f"run {run_id}: {len(prepared.trials)} trial(s), controller PID {pid}, state {store.path}")
    if args.detach:
        print(f"follow with: spottune status {run_id}   (logs: spottune logs {run_id}/TRIAL)")
        return 0
    return follow(store, layout, args.interval)
