import re

import pytest

from runspec.chat_templates import apply_chat_template_setting
from train_core.data.tokenize import tokenize_conversation, tokenize_dataset
from runspec.errors import ConfigError
from train_core.models.loading import load_tokenizer
from train_core.models.sources import resolve_model

CONVERSATION = [
    {"role": "system", "content": "You write ads."},
    {"role": "user", "content": "Tagline for tea"},
    {"role": "assistant", "content": "Steeped in calm."},
    {"role": "user", "content": "Shorter"},
    {"role": "assistant", "content": "Calm, steeped."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("builtin:tiny-qwen2").path)


def test_only_assistant_replies_are_targets(tokenizer):
    sample = tokenize_conversation(tokenizer, CONVERSATION, "assistant")
    target_text = tokenizer.decode([t for t, keep in zip(sample.input_ids, sample.trainable) if keep])
    assert target_text == "Steeped in calm.<|im_end|>\nCalm, steeped.<|im_end|>\n"


def test_train_on_all_marks_every_token_but_the_first(tokenizer):
    sample = tokenize_conversation(tokenizer, CONVERSATION, "all")
    assert sample.trainable[0] is False and all(sample.trainable[1:])


def test_truncation_is_counted_and_targetless_samples_dropped(tokenizer):
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    samples, report = tokenize_dataset(tokenizer, [long, short], max_seq_length=32, train_on="assistant")
    assert report.truncated == 1 and report.dropped_no_target == 1 and report.samples == 1
    assert len(samples) == 1 and len(samples[0]) <= 32


def test_named_and_unknown_templates(tokenizer):
    tokenizer.chat_template = None
    assert apply_chat_template_setting(tokenizer, "auto") == "chatml"
    assert apply_chat_template_setting(tokenizer, "chatml") == "chatml"
    with pytest.raises(ConfigError, match="accepted: auto, chatml"):
        apply_chat_template_setting(tokenizer, "vicuna")


def test_gguf_path_and_builtin_share_one_conversion():
    from train_core.models.sources import smollm2_gguf_path

    assert resolve_model(str(smollm2_gguf_path())).path == resolve_model("builtin:smollm2-135m-instruct").path


def test_hub_ids_are_refused_offline_and_bad_names_explained(monkeypatch):
    from train_core.errors import ModelSourceError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE=1"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(ModelSourceError, match=re.escape("accepted: builtin:smollm2-135m-instruct|tiny-llama|tiny-qwen2")):
        resolve_model("builtin:gpt-5")


def test_eval_samples_takes_the_first_rows_and_leaves_the_fingerprint(tokenizer):
    from tests.train_core.helpers import EVAL_DATA, TRAIN_DATA
    from runspec.config import TrainConfig
    from train_core.data.dataset import prepare_data

    def config(**data):
        return TrainConfig.model_validate({"model": {"name": "builtin:tiny-qwen2"}, "data": {
            "train": str(TRAIN_DATA), "eval": str(EVAL_DATA), "max_seq_length": 256, **data}})

    everything, first = config(), config(eval_samples=5)
    full = prepare_data(everything.data, tokenizer).eval
    some = prepare_data(first.data, tokenizer).eval
    assert len(full) == 40 and len(some) == 5
    assert [s.input_ids for s in some] == [s.input_ids for s in full[:5]]
    assert first.fingerprint() == everything.fingerprint()


def test_a_template_that_fails_on_a_conversation_is_one_data_error(tokenizer):
    from runspec.errors import DataError

    original = tokenizer.chat_template
    apply_chat_template_setting(
        tokenizer, "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}",
    )
    try:
        with pytest.raises(DataError, match=r"data\.chat_template: fails on a conversation with roles \[system, "
                                             r"user, assistant, user, assistant\] \(no system role\)"):
            tokenize_dataset(tokenizer, [CONVERSATION], 128, "assistant")
    finally:
        tokenizer.chat_template = original


def test_a_plain_tokenizer_json_beside_a_qwen2_config_encodes_as_saved(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, PreTrainedTokenizerFast

    AutoConfig.for_model("qwen2", vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=32).save_pretrained(tmp_path)
    core = Tokenizer(models.WordLevel({"<unk>": 0, "<|im_end|>": 1, "w1": 2, "w2": 3}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>").save_pretrained(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer("w1 w2 w1")["input_ids"] == [2, 3, 2]
    assert tokenizer.pad_token == "<|im_end|>"
