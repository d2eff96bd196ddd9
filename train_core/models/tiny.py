"""Tiny random-initialised llama / qwen2 models with a locally trained byte-level BPE tokenizer (no download)."""
from __future__ import annotations

import glob
import os
from pathlib import Path

TINY_ARCHITECTURES = {
    "tiny-llama": dict(
        model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0,
    ),
    "tiny-qwen2": dict(
        model_type="qwen2", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0,
    ),
}
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS_MODULES = ("argparse.py", "textwrap.py", "string.py", "json/decoder.py", "email/message.py", "this.py")
CJK_SEED = "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从"


def _corpus() -> list[str]:
    """A fixed local corpus: a few standard-library sources plus common Chinese characters."""
    stdlib = os.path.dirname(os.__file__)
    texts = []
    for name in CORPUS_MODULES:
        for path in sorted(glob.glob(os.path.join(stdlib, name))):
            with open(path, encoding="utf-8", errors="ignore") as handle:
                texts.append(handle.read())
    texts.append(CJK_SEED * 20)
    return texts


def build_tiny_model(name: str, target: Path) -> None:
    """Write a tiny model (config, random weights with seed 0, tokenizer with a ChatML template) to target."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from train_core.data.templates import CHATML
    from train_core.cache import publish_directory

    tokenizer_core = Tokenizer(models.BPE())
    tokenizer_core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer_core.decoder = decoders.ByteLevel()
    tokenizer_core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer_core.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_core, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML

    settings = dict(TINY_ARCHITECTURES[name])
    model_type = settings.pop("model_type")
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **settings,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    staging = target.parent / f".{target.name}.building-{os.getpid()}"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    publish_directory(staging, target)
