import json

import pytest

from cost_models.architectures import resolve_architecture, table_names
from cost_models.errors import EstimateError

PUBLISHED_PARAMS = {  # total parameters as their model cards state them
    "qwen2-0.5b": 0.494e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-7b": 7.61e9, "llama-3-8b": 8.03e9,
    "llama-3-70b": 70.6e9, "mistral-7b": 7.24e9, "gemma-2-2b": 2.61e9, "phi-3-mini": 3.82e9,
    "smollm2-135m": 0.135e9, "smollm2-360m": 0.362e9, "smollm2-1.7b": 1.71e9, "qwen2.5-72b": 72.7e9,
    "qwen3-0.6b": 0.6e9, "qwen3-1.7b": 1.7e9, "qwen3-4b": 4.0e9, "qwen3-8b": 8.2e9, "llama-3.2-1b": 1.23e9,
    "llama-3.2-3b": 3.21e9, "llama-3.3-70b": 70.6e9, "phi-3.5-mini": 3.82e9, "gemma-2-27b": 27.2e9, "gemma-3-1b": 1.0e9,
}


@pytest.mark.parametrize("name, params", sorted(PUBLISHED_PARAMS.items()))
def test_table_shapes_give_the_published_parameter_counts(name, params):
    assert resolve_architecture(name).total_params == pytest.approx(params, rel=0.02)


def test_issue_models_are_in_the_table():
    names = set(table_names())
    for name in ("qwen2-0.5b", "qwen2.5-72b", "llama-3-8b", "llama-3-70b", "mistral-7b", "gemma-2-2b", "gemma-2-9b",
                 "phi-3-mini", "phi-3-medium", "deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-7b",
                 "smollm2-135m", "smollm2-360m", "smollm2-1.7b", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b",
                 "llama-3.2-1b", "llama-3.2-3b", "llama-3.3-70b", "phi-3.5-mini", "gemma-2-27b", "gemma-3-1b",
                 "gemma-3-4b", "gemma-3-12b", "gemma-3-27b"):
        assert name in names


@pytest.mark.parametrize("alias, name", [
    ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"), ("meta-llama/Llama-3.1-8B-Instruct", "llama-3-8b"),
    ("builtin:smollm2-135m-instruct", "smollm2-135m"), ("QWEN2.5-3B", "qwen2.5-3b"), ("someorg/Qwen2.5-3B-Instruct",
                                                                                     "qwen2.5-3b"),
])
def test_hub_ids_and_builtin_names_resolve_to_table_rows(alias, name):
    assert resolve_architecture(alias).name == name


def test_a_local_config_json_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": True,
    }))
    arch = resolve_architecture(str(tmp_path))
    assert (arch.hidden, arch.head_dim, arch.kv_dim, arch.layers, arch.tied) == (256, 32, 64, 3, True)
    assert arch.linear_params == 3 * (256 * 256 * 2 + 256 * 64 * 2 + 3 * 256 * 512)


def test_a_config_missing_a_field_names_the_file_and_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(EstimateError, match=r"config.json: field 'num_attention_heads'"):
        resolve_architecture(str(tmp_path))


def test_unknown_models_fail_with_one_line_listing_what_is_accepted(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("not-a-model", "someorg/secret-model"):
        with pytest.raises(EstimateError) as error:
            resolve_architecture(name)
        assert str(error.value).startswith("model.name:") and "qwen2.5-7b" in str(error.value)


def test_truncated_copies_keep_the_layer_shape():
    arch = resolve_architecture("llama-3-8b").with_layers(8)
    assert arch.name == "llama-3-8b[8L]" and arch.layers == 8
    assert arch.linear_params * 4 == resolve_architecture("llama-3-8b").linear_params
