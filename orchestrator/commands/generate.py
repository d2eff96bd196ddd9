"""spottune generate [--model M] [--adapter DIR|file://…|s3://…] (--prompt TEXT | --prompts FILE)"""
from __future__ import annotations

import argparse
import sys

from orchestrator.commands.common import non_negative_number, positive_int

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
HELP = "generate replies from a base model, with or without a trained adapter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="base model (as in model.name); default: the adapter's base, else "
                                        f"{DEFAULT_MODEL}")
    parser.add_argument("--adapter", help="a PEFT adapter: a directory, file://PATH or s3://BUCKET/PREFIX "
                                          "(a trial's prefix works too), e.g. runs/quickstart/adapter")
    parser.add_argument("--storage-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL_S3, else AWS)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt")
    source.add_argument("--prompts", help="a .txt file (one prompt per line) or .jsonl (alpaca rows or 'prompt')")
    parser.add_argument("--system", help="system message")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--temperature", type=non_negative_number, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--limit", type=positive_int, help="use only the first N prompts")
    parser.add_argument("--json", action="store_true", help="print JSON lines {prompt, reply}")


def run(args: argparse.Namespace) -> int:
    from train_core.generate import read_prompts, to_jsonl

    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    if args.limit:
        prompts = prompts[: args.limit]
    generator = _generator(args)
    for prompt in prompts:
        reply = generator.reply(
            prompt, system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature
        )
        if args.json:
            sys.stdout.write(to_jsonl([{"prompt": prompt, "reply": reply}]))
        else:
            print(f">>> {prompt}\n{reply}\n")
        sys.stdout.flush()
    return 0


def _generator(args: argparse.Namespace):
    """The Generator for --model and --adapter, the adapter read from its storage location."""
    from train_core.generate import Generator

    if not args.adapter:
        return Generator(args.model or DEFAULT_MODEL)
    from orchestrator.adapters import local_adapter

    with local_adapter(args.adapter, args.storage_endpoint) as adapter_dir:
        return Generator(args.model, str(adapter_dir))
