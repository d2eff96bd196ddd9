import json

from tests.orchestrator.helpers import REPO, TRAIN_DATA, run_cli


def test_catalog_table_shows_prices_with_their_dates():
    result = run_cli("costs", "--gpu", "H100")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["GPU", "VRAM"] and "DATE" in lines[0]
    assert all(line.startswith("H100") for line in lines[1:-1])


def test_a_job_is_priced_per_gpu_type():
    result = run_cli("costs", str(REPO / "examples" / "quickstart.yaml"), "--json")
    records = json.loads(result.stdout)
    assert {r["gpu"] for r in records} >= {"L4", "A10G", "H100", "H200"}
    for record in records:
        assert record["fits"] and record["step_s"] > 0 and record["steps"] > 0
        assert record["spot_usd"] is None or record["spot_usd"] > 0


def test_bad_config_fails_with_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{name: nobody/nothing}}\ndata: {{train: {TRAIN_DATA}}}\n")
    result = run_cli("costs", str(config))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "c.yaml: model.name" in result.stderr
