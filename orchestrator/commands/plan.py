"""spottune plan SPEC.yaml [--gpu G] [--provider P] [--max-price X] [--spot|--on-demand] [--json|--csv] [--plot F]
[--explain TRIAL GPU]"""
from __future__ import annotations

import argparse
import sys

from orchestrator.commands.common import add_offer_filters, comma_list, positive_number

HELP = "before paying: per trial and GPU offer, whether it fits, VRAM, step time, hours, preemptions and expected $"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML")
    add_offer_filters(parser, "the spec's")
    parser.add_argument("--max-price", type=positive_number, help="only offers up to this $ per GPU-hour")
    parser.add_argument("--all-offers", action="store_true",
                        help="list every offer (default: the cheapest offer per GPU type and market)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print every trial x offer row as JSON")
    output.add_argument("--csv", action="store_true", help="print every trial x offer row as CSV")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw expected cost and hours per GPU type")
    parser.add_argument("--explain", nargs=2, metavar=("TRIAL", "GPU"),
                        help="the memory and step-time terms of one trial on one GPU type, with bounds")


def run(args: argparse.Namespace) -> int:
    from cost_models.errors import EstimateError
    from orchestrator import planner
    from orchestrator.data_check import check_trial_data
    from orchestrator.providers import check_providers
    from orchestrator.plan_output import render_plan
    from orchestrator.render import to_csv, to_json
    from orchestrator.spec import load_spec

    spec, trials = load_spec(args.spec)
    check_trial_data(trials, args.spec)
    resources = spec.resources.model_copy(update={
        key: value for key, value in {
            "gpus": comma_list(args.gpu), "providers": comma_list(args.provider), "market": args.market,
        }.items() if value
    })
    where = "--provider" if args.provider else f"{args.spec}: field 'resources.providers'"
    check_providers(resources.providers, where, launch=False)
    try:
        offers = planner.offers_for(resources)
        if args.max_price is not None:
            offers = [offer for offer in offers if offer.usd_per_gpu_hour <= args.max_price]
        plan = planner.plan_sweep(spec.model_copy(update={"resources": resources}), trials, offers)
    except EstimateError as error:
        raise EstimateError(f"{args.spec}: {error}") from None
    records = [row.as_dict() for row in plan.rows]
    if args.explain:
        from orchestrator.explain_output import pick_row, render_explain

        try:
            print(render_explain(pick_row(plan, *args.explain)))
        except EstimateError as error:
            raise EstimateError(f"{args.spec}: {error}") from None
        return 0
    if args.json:
        sys.stdout.write(to_json({
            "sweep": spec.name, "offers": plan.offers, "total_usd": plan.total_usd, "notes": plan.notes,
            "trials": [{"trial": t.trial_id, "steps": t.steps, "data": t.data, "advice": t.advice,
                        "chosen": t.chosen.as_dict() if t.chosen else None} for t in plan.trials],
            "rows": records,
        }) + "\n")
    elif args.csv:
        sys.stdout.write(to_csv(records))
    else:
        print(render_plan(spec.name, trials, plan, args.all_offers))
    if args.plot:
        from orchestrator.plan_output import plot_plan

        plot_plan(plan, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0 if not plan.unplaced else 1
