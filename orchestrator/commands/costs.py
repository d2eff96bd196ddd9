"""spottune costs [CONFIG.yaml] [--gpu G] [--provider P] [--spot|--on-demand] [--json|--csv]"""
from __future__ import annotations

import argparse
import sys

from orchestrator.commands.common import add_offer_filters, comma_list

HELP = "the GPU catalog with prices and dates; with a train config, what that job costs on each GPU type"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="train config YAML: price this job on every GPU type")
    add_offer_filters(parser, "all but local")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print rows as JSON")
    output.add_argument("--csv", action="store_true", help="print rows as CSV")


def run(args: argparse.Namespace) -> int:
    from cost_models.catalog import list_offers
    from cost_models.errors import EstimateError
    from orchestrator.views.costs_output import catalog_records, catalog_table, job_records, job_table
    from orchestrator.views.render import to_csv, to_json

    try:
        offers = list_offers(comma_list(args.provider), args.market or "any", comma_list(args.gpu))
        if args.config:
            from orchestrator.sweep.planner import trial_job
            from runspec.config import load_config

            from orchestrator.sweep.data_check import check_config_data

            config = load_config(args.config)
            check_config_data(config, args.config)
            records = job_records(trial_job("job", config), offers)
            text = job_table(args.config, records)
        else:
            records = catalog_records(offers)
            text = catalog_table(records)
    except EstimateError as error:
        raise EstimateError(f"{args.config}: {error}" if args.config else str(error)) from None
    if args.json:
        sys.stdout.write(to_json(records) + "\n")
    elif args.csv:
        sys.stdout.write(to_csv(records))
    else:
        print(text)
    return 0
