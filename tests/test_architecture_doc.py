"""docs/ARCHITECTURE.md stays true: `spottune --help` points at it, it answers the newcomer's questions, and every
module path it names exists."""
import re
from pathlib import Path

from orchestrator.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def test_help_points_at_the_architecture_page():
    assert "docs/ARCHITECTURE.md" in build_parser().format_help()


def test_the_page_answers_where_notices_vram_and_checkpoints_are_handled():
    headings = [line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("## ")]
    assert headings == [
        "## A sweep, from YAML to a committed checkpoint",
        "## Where a checkpoint is committed",
        "## What happens when a spot notice arrives",
        "## How peak VRAM is estimated",
        "## How to add a provider",
    ]


def test_every_path_it_names_exists():
    paths = set(re.findall(r"`((?:orchestrator|cluster|cost_models|runspec|train_core|tests)/[\w/.]*)`",
                           DOC.read_text(encoding="utf-8")))
    assert len(paths) > 30
    missing = sorted(path for path in paths if "NAME" not in path and not (ROOT / path.rstrip("/")).exists())
    assert not missing, missing
