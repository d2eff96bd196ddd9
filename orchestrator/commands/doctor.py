"""spottune doctor"""
from __future__ import annotations

import argparse

HELP = "check that this machine can train: device, 4-bit weights, one LoRA step, checkpoints"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", help="where to write the doctor's scratch files (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from train_core.doctor import run_checks

    results = run_checks(Path(args.work_dir) if args.work_dir else None)
    width = max(len(result.name) for result in results)
    for result in results:
        verdict = "PASS" if result.passed else "FAIL"
        print(f"{verdict}  {result.name:<{width}}  {result.detail}  [{result.seconds:.1f}s]")
    failed = [result.name for result in results if not result.passed]
    print("all checks passed" if not failed else f"{len(failed)} check(s) failed: {', '.join(failed)}")
    return 1 if failed else 0
