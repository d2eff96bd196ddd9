"""`spottune plan` and `spottune costs` must run where torch is not installed: they never import it."""
from tests.orchestrator.helpers import REPO, run_cli, write_spec


def test_plan_never_imports_torch(tmp_path):
    result = run_cli("plan", str(write_spec(tmp_path)), "--json", check_no_torch=True)
    assert result.returncode == 0, result.stderr


def test_costs_never_imports_torch():
    assert run_cli("costs", check_no_torch=True).returncode == 0
    result = run_cli("costs", str(REPO / "examples" / "quickstart.yaml"), check_no_torch=True)
    assert result.returncode == 0, result.stderr
    assert "CALIBRATED" in result.stdout
