"""`spottune doctor` passes here; `spottune generate` runs a base model with and without a trained adapter."""
import json
from importlib.metadata import version

from tests.train_core.helpers import run_cli, write_config


def test_doctor_passes_in_a_work_dir_it_creates_and_prints_versions_ray_and_storage(tmp_path):
    work_dir, storage = tmp_path / "not" / "yet", tmp_path / "storage"
    result = run_cli("doctor", "--work-dir", str(work_dir), "--storage", f"file://{storage}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and work_dir.is_dir()
    for check in ("environment", "device", "4-bit weights", "train step", "checkpoint", "ray", "storage"):
        assert f"PASS  {check}" in result.stdout
    environment = next(line for line in result.stdout.splitlines() if line.startswith("PASS  environment"))
    for package in ("torch", "transformers", "peft", "bitsandbytes", "ray", "pydantic"):
        assert f" {package} {version(package)}" in environment
    assert list(storage.iterdir()) == []  # the probe object was deleted


def test_doctor_refuses_a_work_dir_that_is_a_file_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_cli("doctor", "--work-dir", str(tmp_path / "file"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"spottune doctor: error: --work-dir: {tmp_path / 'file'} exists and is not a folder; accepted: a folder, or a path to create"


def test_generate_with_adapter_and_prompt_file(tmp_path):
    config = write_config(tmp_path, {"training": {"max_steps": 2}})
    assert run_cli("train", str(config)).returncode == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a tea.\nName a cup.\n", encoding="utf-8")
    result = run_cli(
        "generate", "--model", "builtin:tiny-llama", "--adapter", str(tmp_path / "run" / "adapter"),
        "--prompts", str(prompts), "--max-new-tokens", "5", "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["prompt"] for record in records] == ["Name a tea.", "Name a cup."]
    assert all(isinstance(record["reply"], str) for record in records)


def test_generate_rejects_a_directory_that_is_not_an_adapter(tmp_path):
    result = run_cli("generate", "--model", "builtin:tiny-llama", "--adapter", str(tmp_path), "--prompt", "hi")
    assert result.returncode == 2 and "no adapter_config.json" in result.stderr and "Traceback" not in result.stderr


def test_generate_with_an_adapter_and_no_model_uses_the_adapters_base_model(tmp_path):
    config = write_config(tmp_path, {"model": {"name": "builtin:tiny-qwen2"}, "training": {"max_steps": 1}})
    assert run_cli("train", str(config)).returncode == 0
    adapter = tmp_path / "run" / "adapter"
    result = run_cli("generate", "--adapter", str(adapter), "--prompt", "Name a tea.", "--max-new-tokens", "3", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["prompt"] == "Name a tea."
    settings = json.loads((adapter / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(settings))
    missing = run_cli("generate", "--adapter", str(adapter), "--prompt", "hi")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert f"base model {tmp_path / 'gone'} (base_model_name_or_path) is not on this machine; pass --model" in missing.stderr
