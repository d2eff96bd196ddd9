"""Node-side code (cluster/node/) runs on rented nodes: it imports nothing of the controller (orchestrator)."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "cluster" / "node"


def test_no_orchestrator_import_in_the_source():
    sources = sorted(NODE.glob("*.py"))
    assert {path.name for path in sources} >= {"agent.py", "preemption.py", "worker.py"}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] != "orchestrator", f"{path.name} imports {name}"


def test_importing_every_node_module_loads_nothing_of_the_controller():
    code = (
        "import sys, pkgutil, importlib, cluster.node\n"
        "for m in pkgutil.iter_modules(cluster.node.__path__): importlib.import_module('cluster.node.' + m.name)\n"
        "from cluster.node.worker import train_worker\n"
        "assert callable(train_worker)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'orchestrator')\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
