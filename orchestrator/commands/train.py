"""spottune train CONFIG.yaml [--resume] [--output-dir DIR|file://DIR|s3://BUCKET/PREFIX]"""
from __future__ import annotations

import argparse

HELP = "fine-tune one model from a train YAML (standalone, on this machine)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="train config YAML (see examples/quickstart.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest committed checkpoint")
    parser.add_argument(
        "--output-dir", help="override output_dir: a local directory, file://DIR or s3://BUCKET/PREFIX "
        "(S3 credentials and endpoint from the environment: AWS_* variables, AWS_ENDPOINT_URL_S3)"
    )


def run(args: argparse.Namespace) -> int:
    import hashlib
    from pathlib import Path

    from cluster.storage import check_writable, open_store, parse_uri
    from train_core.cache import cache_root
    from runspec.config import load_config

    config = load_config(args.config)
    if args.output_dir:
        config.output_dir = args.output_dir
    field = "--output-dir" if args.output_dir else f"{args.config}: field 'output_dir'"
    location = parse_uri(config.output_dir, field=field)
    check_writable(location)
    store = open_store(location)

    from train_core.trainer import train

    if location.scheme == "file":
        work_dir = Path(location.path)
    else:
        work_dir = cache_root() / "work" / hashlib.sha256(str(location).encode()).hexdigest()[:16]
    result = train(config, resume=args.resume, store=store, work_dir=work_dir)
    if location.scheme != "file" and (work_dir / "metrics.jsonl").is_file():
        store.write_text("metrics.jsonl", (work_dir / "metrics.jsonl").read_text(encoding="utf-8"))
    summary = f"{result.status}: step {result.step}/{result.total_steps}"
    if result.losses:
        summary += f", loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}"
    if result.eval_loss is not None:
        summary += f", eval loss {result.eval_loss:.4f}"
    print(summary)
    return 0
