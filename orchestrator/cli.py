"""`spottune`: the command-line entry point. Commands live one per module in orchestrator/commands/.

Command modules import only the standard library at import time, so `spottune plan` and `spottune costs`
never load torch; heavy imports happen inside each command's run().
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": "orchestrator.commands.train",
    "generate": "orchestrator.commands.generate",
    "export": "orchestrator.commands.export",
    "doctor": "orchestrator.commands.doctor",
    "plan": "orchestrator.commands.plan",
    "costs": "orchestrator.commands.costs",
    "submit": "orchestrator.commands.submit",
    "status": "orchestrator.commands.status",
    "resume": "orchestrator.commands.resume",
    "cancel": "orchestrator.commands.cancel",
    "logs": "orchestrator.commands.logs",
    "report": "orchestrator.commands.report",
    "node": "orchestrator.commands.node",
}
USER_ERRORS = (
    "runspec.errors:UserError",
    "orchestrator.errors:SpecError",
    "cost_models.errors:EstimateError",
    "cluster.errors:ClusterError",
)


def _user_error_types() -> tuple[type[BaseException], ...]:
    types = []
    for entry in USER_ERRORS:
        module_name, _, name = entry.partition(":")
        try:
            types.append(getattr(importlib.import_module(module_name), name))
        except (ImportError, AttributeError):
            continue
    return tuple(types)


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes end as one line (with a pointer to --help), like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="spottune", description="Fine-tune LLMs with QLoRA on the cheapest spot GPU that fits.",
        epilog="How it works (a sweep's path, what happens when a spot notice arrives, how peak VRAM is estimated, "
        "where a checkpoint is committed, how to add a provider): docs/ARCHITECTURE.md",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("spottune: interrupted", file=sys.stderr)
        return 130
    except _user_error_types() as error:
        print(f"spottune {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
