import json

import pytest

from cost_models.errors import EstimateError
from cost_models.tokens import dataset_row_stats


@pytest.fixture
def model_dir(tmp_path):
    """A whitespace word-level tokenizer: one token per word, special markers are single tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "a", "b", "c"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory = tmp_path / "model"
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return directory


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_counts_tokens_with_the_model_tokenizer_and_template(tmp_path, model_dir):
    data = write(tmp_path / "d.jsonl", [{"instruction": "a a", "output": "b b b"}] * 10)
    stats = dataset_row_stats(data, model_dir, 1024, packing=False)
    # <|im_start|> user a a <|im_end|> / <|im_start|> assistant b b b <|im_end|>: 5 + 6 tokens
    assert (stats.mean_tokens, stats.max_tokens, stats.rows, stats.mean_samples) == (11, 11, 10, 1)
    assert stats.target_fraction == pytest.approx(4 / 11)  # the reply and its end-of-turn marker
    assert "tokenized with model" in stats.source


def test_packing_fills_rows_and_truncation_caps_them(tmp_path, model_dir):
    data = write(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}] * 40)  # 8 tokens each
    packed = dataset_row_stats(data, model_dir, 32, packing=True)
    assert (packed.rows, packed.max_tokens, packed.mean_samples) == (10, 32, 4)
    truncated = dataset_row_stats(data, model_dir, 7, packing=False)  # the reply "b" is the 7th token
    assert truncated.max_tokens == 7
    with pytest.raises(EstimateError, match="no sample has a target token within max_seq_length=6"):
        dataset_row_stats(data, model_dir, 6, packing=False)  # the trainer drops samples cut before their reply


def test_without_a_tokenizer_counts_are_estimated_and_say_so(tmp_path):
    data = write(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "x" * 380},
                                                      {"role": "assistant", "content": "y" * 380}]}])
    stats = dataset_row_stats(data, None, 4096, packing=False)
    assert 200 < stats.mean_tokens < 230 and "estimated" in stats.source


def test_results_are_cached_on_disk(tmp_path, model_dir):
    data = write(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}] * 3)
    first = dataset_row_stats(data, model_dir, 64, True, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "token_stats").glob("*.json"))
    dataset_row_stats.cache_clear()
    assert dataset_row_stats(data, model_dir, 64, True, cache_dir=tmp_path / "cache") == first


def test_bad_rows_name_the_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"prompt": 1}\n')
    with pytest.raises(EstimateError, match=r"d.jsonl:2: alpaca rows need 'instruction' and 'output'"):
        dataset_row_stats(data, None, 64, True)
