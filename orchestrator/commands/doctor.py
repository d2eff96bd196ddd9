"""spottune doctor [--work-dir DIR] [--storage URI]"""
from __future__ import annotations

import argparse

HELP = "check that this machine can train: versions, device, 4-bit weights, one LoRA step, checkpoints, Ray, storage"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir", help="where to write the doctor's scratch files; created if missing (default: a temp dir)"
    )
    parser.add_argument(
        "--storage", default="file://./runs",
        help="storage to probe with a write, read and delete: file://PATH or s3://BUCKET/PREFIX (default: file://./runs)",
    )
    parser.add_argument("--storage-endpoint", help="S3-compatible endpoint URL for an s3:// --storage")


def prepare_work_dir(text: str):
    """The --work-dir folder, created when missing (as train does for output_dir); one line when that is impossible."""
    from pathlib import Path

    from orchestrator.errors import SpecError

    work_dir = Path(text)
    if work_dir.exists() and not work_dir.is_dir():
        raise SpecError(f"--work-dir: {work_dir} exists and is not a folder; accepted: a folder, or a path to create")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SpecError(f"--work-dir: cannot create {work_dir}: {error.strerror}") from None
    return work_dir


def run(args: argparse.Namespace) -> int:
    from cluster.storage import parse_uri
    from orchestrator.doctor_checks import check_ray, check_storage
    from train_core.doctor import run_checks

    work_dir = prepare_work_dir(args.work_dir) if args.work_dir else None
    parse_uri(args.storage, "--storage")
    results = run_checks(work_dir)
    results += [check_ray(), check_storage(args.storage, args.storage_endpoint)]
    width = max(len(result.name) for result in results)
    for result in results:
        verdict = "PASS" if result.passed else "FAIL"
        print(f"{verdict}  {result.name:<{width}}  {result.detail}  [{result.seconds:.1f}s]")
    failed = [result.name for result in results if not result.passed]
    print("all checks passed" if not failed else f"{len(failed)} check(s) failed: {', '.join(failed)}")
    return 1 if failed else 0
