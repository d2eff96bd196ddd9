"""spottune train CONFIG.yaml [--resume]"""
from __future__ import annotations

import argparse

HELP = "fine-tune one model from a train YAML (standalone, on this machine)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="train config YAML (see examples/quickstart.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest committed checkpoint")
    parser.add_argument("--output-dir", help="override output_dir from the config")


def run(args: argparse.Namespace) -> int:
    from train_core.config import load_config
    from train_core.trainer import train

    config = load_config(args.config)
    if args.output_dir:
        config.output_dir = args.output_dir
    result = train(config, resume=args.resume)
    summary = f"{result.status}: step {result.step}/{result.total_steps}"
    if result.losses:
        summary += f", loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}"
    if result.eval_loss is not None:
        summary += f", eval loss {result.eval_loss:.4f}"
    print(summary)
    return 0
