"""spottune node run --payload URI"""
from __future__ import annotations

import argparse

HELP = "run one trial attempt on this node (what a node's boot script starts; not for direct use)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_parser = actions.add_parser("run", help="join the attempt's Ray cluster and train (node 0 leads)")
    run_parser.add_argument("--payload", required=True, metavar="URI",
                            help="the attempt's payload.json in the run's storage (file:// or s3://)")


def run(args: argparse.Namespace) -> int:
    import os

    from cluster.node.entry import run_node

    os.umask(0o077)
    return run_node(args.payload, os.environ)
