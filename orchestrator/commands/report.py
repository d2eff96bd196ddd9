"""spottune report [RUN] [--json] [--png PATH]"""
from __future__ import annotations

import argparse

from orchestrator.commands.common import add_state_dir

HELP = "best trial by eval loss, per-trial cost ledger with the $ wasted by preemptions, resume latency, loss PNG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run id (default: the most recent run)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--png", help="where to write the loss-curve plot (default: <state-dir>/<run>/report.png)")
    add_state_dir(parser)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from orchestrator.commands.common import latest_run, open_state
    from orchestrator.run.layout import RunLayout
    from orchestrator.views.report import build_report, plot_losses, render_text

    store, state_dir = open_state(args)
    run_id = args.run or latest_run(store)
    report = build_report(store, run_id)
    png = plot_losses(store, run_id, Path(args.png) if args.png else RunLayout(state_dir, run_id).report_png)
    report["png"] = str(png)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
        print(f"\nloss curves: {png}")
    return 0
