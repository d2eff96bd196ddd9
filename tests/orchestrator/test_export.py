"""`spottune export`: merged weights give base + adapter's logits, GGUF round-trips, S3 in and out, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from orchestrator.cli import main
from tests.orchestrator.adapters import base_plus_adapter, greedy_text, prompt_inputs, random_adapter

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1.5e-1}  # max |logit difference| after rounding the weights


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    return random_adapter("builtin:tiny-llama", tmp_path_factory.mktemp("adapter") / "adapter")


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**prompt_inputs(tokenizer)).logits.float()


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_export_loads_with_from_pretrained_and_gives_base_plus_adapter_logits(tiny_adapter, tmp_path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["export", str(tiny_adapter), "--to", str(tmp_path / "out"), "--dtype", dtype]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.chat_template and any(p.suffix == ".safetensors" for p in (tmp_path / "out").iterdir())
    assert not list((tmp_path / "out").glob("adapter_*")), "a merged model, not an adapter"
    reference = base_plus_adapter(tiny_adapter)
    expected = _logits(reference, tokenizer)
    with reference.disable_adapter():
        base_only = _logits(reference, tokenizer)
    difference = (_logits(exported, tokenizer) - expected).abs().max().item()
    assert difference < TOLERANCE[dtype]
    assert (base_only - expected).abs().max().item() > 3 * TOLERANCE[dtype], "the adapter changes the logits"


@pytest.mark.parametrize("base", ["builtin:tiny-llama", "builtin:tiny-qwen2"])
@pytest.mark.parametrize("kind", ["f16", "bf16", "q8_0"])
def test_gguf_loads_through_transformers_and_generates_the_same_text(tmp_path, base, kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = random_adapter(base, tmp_path / "adapter")
    assert main(["export", str(adapter), "--to", str(tmp_path / "out"), "--dtype", "fp32", "--gguf", kind]) == 0
    (gguf_file,) = (tmp_path / "out" / "gguf").glob("*.gguf")
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    reference = base_plus_adapter(adapter)
    reference_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")  # the exported HF tokenizer
    assert torch.equal(prompt_inputs(tokenizer)["input_ids"], prompt_inputs(reference_tokenizer)["input_ids"])
    assert greedy_text(model, tokenizer) == greedy_text(reference, reference_tokenizer)


@pytest.mark.slow
def test_smollm2_gguf_gives_the_same_greedy_text(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = random_adapter("builtin:smollm2-135m-instruct", tmp_path / "adapter", scale=0.3)
    assert main(["export", str(adapter), "--to", str(tmp_path / "out"), "--dtype", "fp32", "--gguf", "f16"]) == 0
    gguf_dir = tmp_path / "out" / "gguf"
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="llama-f16.gguf", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="llama-f16.gguf")
    reference, reference_tokenizer = base_plus_adapter(adapter), AutoTokenizer.from_pretrained(tmp_path / "out")
    expected = greedy_text(reference, reference_tokenizer)
    with reference.disable_adapter():
        assert greedy_text(reference, reference_tokenizer) != expected, "the adapter matters"
    assert greedy_text(model, tokenizer) == expected


def test_generate_and_export_read_an_adapter_from_s3(tiny_adapter, s3_server, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    from cluster.storage import open_store

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    trial = f"s3://{s3_server.bucket}/{s3_server.prefix('export')}/run/t000"
    open_store(trial).upload_dir(tiny_adapter, "adapter")
    ask = ["generate", "--prompt", "Hello", "--max-new-tokens", "12", "--json"]
    assert main([*ask, "--adapter", str(tiny_adapter)]) == 0
    local = json.loads(capsys.readouterr().out)["reply"]
    assert main([*ask, "--adapter", f"{trial}/adapter"]) == 0
    assert json.loads(capsys.readouterr().out)["reply"] == local
    assert main([*ask, "--model", "builtin:tiny-llama"]) == 0
    assert json.loads(capsys.readouterr().out)["reply"] != local, "the adapter changes the reply"

    exported = f"s3://{s3_server.bucket}/{s3_server.prefix('export')}/merged"
    assert main(["export", trial, "--to", exported, "--dtype", "fp32"]) == 0
    open_store(exported).download_dir("", tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert main(["export", trial, "--to", exported]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert model.config.model_type == "llama"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_export_to_a_non_empty_directory_needs_force(tiny_adapter, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(tiny_adapter), "--to", str(out)]) == 2
    err = _one_error_line(capsys)
    assert "is not empty" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert main(["export", str(tiny_adapter), "--to", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and not (out / "notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging left behind"


def test_export_refuses_a_base_model_that_does_not_match(tiny_adapter, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from train_core.models.sources import resolve_model

    tiny = resolve_model("builtin:tiny-llama").path
    config = AutoConfig.from_pretrained(tiny)
    config.hidden_size, config.intermediate_size = 32, 96
    other = tmp_path / "other-base"
    AutoModelForCausalLM.from_config(config).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(other)
    assert main(["export", str(tiny_adapter), "--base", str(other), "--to", str(tmp_path / "out")]) == 2
    err = _one_error_line(capsys)
    assert "does not match the adapter" in err and "32" in err
    assert not (tmp_path / "out").exists()


def test_export_of_a_location_without_an_adapter_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--to", str(tmp_path / "out")]) == 2
    assert "no adapter_config.json" in _one_error_line(capsys)


def test_push_while_offline_is_one_line_and_writes_nothing(tiny_adapter, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["export", str(tiny_adapter), "--to", str(tmp_path / "out"), "--push", "me/model"]) == 2
    assert "offline" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_adapter_in_a_missing_bucket_is_one_line(s3_server, monkeypatch, capsys):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    assert main(["generate", "--adapter", "s3://no-such-bucket-here/run/t000", "--prompt", "Hi"]) == 2
    assert "bucket s3://no-such-bucket-here" in _one_error_line(capsys)
