"""spottune export ADAPTER [--base MODEL] --to DIR|s3://… [--force] [--dtype bf16|fp16|fp32] [--gguf [TYPE]] [--push REPO]"""
from __future__ import annotations

import argparse

HELP = "merge a trained LoRA adapter into its base model and write a Hugging Face model directory (and GGUF)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="adapter location: a directory, file://PATH or s3://BUCKET/PREFIX "
                                        "(a trial's prefix works too), as `spottune report` prints it")
    parser.add_argument("--base", help="base model (as in model.name); default: the one the adapter names")
    parser.add_argument("--to", required=True, help="output: a directory, file://PATH or s3://BUCKET/PREFIX")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output location")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="merged weights' dtype")
    parser.add_argument("--gguf", nargs="?", const="f16", choices=("f16", "bf16", "f32", "q8_0"),
                        help="also write a GGUF file (llama, mistral, qwen2; default type f16)")
    parser.add_argument("--push", metavar="REPO", help="also upload the model directory to this Hugging Face Hub repo")
    parser.add_argument("--storage-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL_S3, else AWS)")


def run(args: argparse.Namespace) -> int:
    from orchestrator.model_export import export_adapter

    location = export_adapter(
        args.adapter, args.to, base=args.base, dtype=args.dtype, gguf_type=args.gguf, push=args.push,
        force=args.force, endpoint_url=args.storage_endpoint, log=print,
    )
    print(f"exported: {location}")
    return 0
