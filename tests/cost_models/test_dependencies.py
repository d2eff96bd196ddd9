"""cost_models is pure Python (+ tokenizers and jinja2 for token counts, runspec's plain rules): no torch, no
train_core, nothing that imports "up" (orchestrator, cluster). Its source is checked in tests/runspec/test_dependencies.py."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {"torch", "train_core", "orchestrator", "cluster", "ray", "boto3", "kubernetes", "numpy", "pydantic"}


def test_importing_every_module_and_estimating_loads_nothing_heavy():
    code = (
        "import sys, pkgutil, importlib, cost_models\n"
        "for m in pkgutil.iter_modules(cost_models.__path__): importlib.import_module('cost_models.' + m.name)\n"
        "from cost_models.architectures import resolve_architecture\n"
        "from cost_models.shape import JobShape, RowStats\n"
        "from cost_models.catalog import gpu\n"
        "from cost_models.autosize import autosize\n"
        "a = resolve_architecture('llama-3-8b')\n"
        "autosize(JobShape(a, 'nf4', 16, a.module_names, 2048, 1, 1, 'full', RowStats.full_rows(2048)), gpu('L4'), 8)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
