"""The quickstart config trains the real SmolLM2 (shortened here) and its adapter loads with plain PEFT."""
import json

import pytest
import torch

from tests.train_core.helpers import EVAL_DATA, REPO, read_jsonl
from runspec.config import load_config
from train_core.models.sources import resolve_model
from train_core.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_quickstart_loss_falls_and_adapter_loads_with_peft(tmp_path):
    config = load_config(REPO / "examples" / "quickstart.yaml")
    eval_rows = EVAL_DATA.read_text(encoding="utf-8").splitlines()[:6]
    (tmp_path / "eval.jsonl").write_text("\n".join(eval_rows) + "\n", encoding="utf-8")
    config.data.eval = str(tmp_path / "eval.jsonl")
    config.training.max_steps = 4
    config.output_dir = str(tmp_path / "run")

    result = train(config)

    evals = [record["eval_loss"] for record in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in record]
    assert result.status == "completed" and len(evals) == 2
    assert evals[-1] < evals[0] - 0.05, evals

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == config.lora.r
    base = AutoModelForCausalLM.from_pretrained(resolve_model(config.model.name).path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter))
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    loaded = {name: tensor for name, tensor in model.state_dict().items() if "lora_" in name}
    assert len(loaded) == len(saved) > 0
    lora_b = [tensor for name, tensor in saved.items() if "lora_B" in name]
    assert all(tensor.abs().sum() > 0 for tensor in lora_b)
    first_b = next(name for name in saved if "lora_B" in name)
    matching = next(tensor for name, tensor in loaded.items() if name.startswith(first_b.removesuffix(".weight")))
    assert torch.equal(matching, saved[first_b])
