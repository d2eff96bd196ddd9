"""Bad sweep specs fail with one clear line, exit status 2, before anything is registered or launched."""
from __future__ import annotations

import uuid

import pytest
import yaml

from orchestrator.cli import main
from tests.orchestrator.sweeps import spottune, tiny_sweep


def _spec(tmp_path, **changes):
    path = tiny_sweep(tmp_path, "bad")
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


CASES = {
    "unknown field": ({"budget": 5}, "field 'budget': unknown field; accepted fields here: base, checkpoint"),
    "empty grid": ({"search/parameters/training.learning_rate": []},
                   "search.parameters.training.learning_rate is an empty list"),
    "unknown GPU": ({"resources/gpus": ["B300"]}, "resources.gpus: unknown GPU 'B300'; accepted: A10G"),
    "budget below the cheapest trial": ({"resources/max_total_cost": 1e-12},
                                        "field 'resources.max_total_cost': budget $1e-12 is below the expected $"),
    "provider without a launcher": ({"resources/providers": ["gcp"]},
                                    "provider 'gcp' can be planned (spottune plan) but not launched"),
    "bad trial config": ({"config/training/batch_size": 0}, "field 'training.batch_size': Input should be greater"),
    "schedule names no trial": ({"provider_settings/local/market/preemptions": [{"trial": 7, "at_step": 2}]},
                                "field 'provider_settings.local.market': no trial 7 in this sweep"),
    "settings of an unknown provider": ({"provider_settings/moon": {}},
                                        "field 'provider_settings.moon': unknown field; accepted fields here: aws, "),
    "a provider's settings checked by its model": (
        {"provider_settings/local/market/hazard_per_hour": -1},
        "field 'provider_settings.local.market.hazard_per_hour': Input should be greater than or equal to 0"),
    "an unknown field of a provider's settings": (
        {"provider_settings/local/markets": {}},
        "field 'provider_settings.local.markets': unknown field; accepted fields here: market"),
    "settings for a plan-only provider": (
        {"provider_settings/gcp/region": "us-east-1"},
        "field 'provider_settings.gcp.region': unknown field; accepted fields here: none"),
    "unsupported storage": ({"storage": "gs://bucket/x"},
                            "field 'storage': unsupported storage scheme 'gs://'; accepted: "),
    "no capacity at this price": ({"resources/max_price_per_hour": 0.001},
                                  "cannot be placed: fits, but every fitting offer costs more than max_price_per_hour"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec_fails_with_one_line_before_anything_launches(case, tmp_path, capsys):
    changes, expected = CASES[case]
    spec = _spec(tmp_path, **changes)
    state_dir = tmp_path / "state"
    assert main(["submit", str(spec), "--state-dir", str(state_dir)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spottune submit: error: {spec}"), captured.err
    assert expected in lines[0]
    assert captured.out == ""
    assert not state_dir.exists(), "nothing may be registered for a bad spec"


def test_missing_bucket_fails_before_launch(tmp_path, capsys, monkeypatch, s3_server):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    spec = _spec(tmp_path, storage=f"s3://missing-{uuid.uuid4().hex[:8]}/x")
    assert main(["submit", str(spec), "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "state").exists()


def test_exit_status_and_stderr_from_the_real_command(tmp_path):
    result = spottune("submit", str(_spec(tmp_path, resources={"gpus": ["B300"]})), "--state-dir",
                      str(tmp_path / "state"))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "unknown GPU 'B300'" in result.stderr


def test_a_malformed_base_config_names_its_file_and_line(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  name: builtin:tiny-llama\ntraining: [unclosed\n", encoding="utf-8")
    spec = _spec(tmp_path, base="base.yaml")
    assert main(["submit", str(spec), "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{base}: line" in err and "not valid YAML" in err, err
