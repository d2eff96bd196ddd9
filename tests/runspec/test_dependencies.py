"""Import rules between the packages: runspec is the torch-free leaf, cost_models stays torch-free on top of it,
train_core never reaches for the cluster stack, and nothing below orchestrator imports it."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BLOCK_TORCH = (
    "import sys\n"
    "class Blocked:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'transformers', 'numpy'):\n"
    "            raise ImportError(f'{name} is blocked in this test')\n"
    "sys.meta_path.insert(0, Blocked())\n"
)


def imported_roots(package: str) -> list[tuple[str, str]]:
    """(file, top-level module) for every absolute import in a package's source, nested ones included."""
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            found += [(str(path.relative_to(REPO)), name.split(".")[0]) for name in names]
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("runspec", {"torch", "transformers", "numpy", "cost_models", "train_core", "orchestrator", "cluster", "ray",
                 "boto3", "kubernetes"}),
    ("train_core", {"ray", "boto3", "kubernetes", "orchestrator", "cluster"}),
    ("cost_models", {"torch", "train_core", "orchestrator", "cluster", "ray", "boto3", "kubernetes", "numpy",
                     "pydantic"}),
    ("cluster", {"orchestrator"}),
])
def test_no_import_against_the_layering(package, forbidden):
    bad = [(path, name) for path, name in imported_roots(package) if name in forbidden]
    assert not bad, bad


def test_runspec_resolves_and_reads_data_with_torch_blocked():
    code = BLOCK_TORCH + (
        "import pkgutil, importlib, runspec\n"
        "for m in pkgutil.iter_modules(runspec.__path__): importlib.import_module('runspec.' + m.name)\n"
        "from runspec.config import load_config\n"
        "from runspec.fast_support import ModelFacts\n"
        "from runspec.resolve import Device, resolve\n"
        "from runspec.data_formats import file_format, read_jsonl, to_conversation\n"
        "config = load_config('examples/quickstart.yaml')\n"
        "run = resolve(config, Device('cpu'), lambda: ModelFacts('llama', None))\n"
        "assert run.engine == 'hf' and run.micro_batch >= 1, run\n"
        "rows = [(str(n), row) for n, row in read_jsonl(__import__('pathlib').Path(config.data.train))]\n"
        "assert to_conversation(rows[0][1], file_format(rows, 'auto'), rows[0][0])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'cost_models', 'train_core', "
        "'orchestrator', 'cluster'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cost_models_sizes_a_config_with_torch_blocked():
    code = BLOCK_TORCH + (
        "from runspec.config import load_config\n"
        "from runspec.resolve import Device, resolve\n"
        "from cost_models.sizing import MemoryModelSizer, architecture, model_facts\n"
        "config = load_config('examples/quickstart.yaml')\n"
        "arch = architecture(config, None)\n"
        "run = resolve(config, Device('cuda', 'L4', 22.35), lambda: model_facts(arch), MemoryModelSizer())\n"
        "assert run.micro_batch >= 1 and run.checkpointing in ('none', 'full', 'offload'), run\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
