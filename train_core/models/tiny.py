"""Tiny random-initialised models of each architecture the fast engine runs, with a locally trained byte-level BPE tokenizer (no download)."""
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
    "tiny-qwen3": dict(  # q/k norm per head
        model_type="qwen3", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, rope_theta=1000000.0,
    ),
    "tiny-llama3.2": dict(  # llama3 rope scaling, tied embeddings
        model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, max_position_embeddings=131072, rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
    "tiny-phi3": dict(  # fused qkv_proj and gate_up_proj; longrope switching to its long factors past 64 tokens
        model_type="phi3", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, original_max_position_embeddings=64, rope_parameters=dict(
            rope_type="longrope", rope_theta=10000.0, original_max_position_embeddings=64,
            short_factor=[1.0, 1.0, 1.1, 1.2, 1.5, 2.0, 2.5, 3.0], long_factor=[1.0, 1.5, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0],
        ),
    ),
    "tiny-gemma2": dict(  # soft-capping, alternating 6-token sliding windows, query_pre_attn_scalar, GeGLU
        model_type="gemma2", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, query_pre_attn_scalar=24, sliding_window=6,
        attn_logit_softcapping=1.0, final_logit_softcapping=2.0, initializer_range=0.1,
    ),
    "tiny-gemma3": dict(  # q/k norm, sliding and full layers with their own rope, no soft-capping
        model_type="gemma3_text", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, query_pre_attn_scalar=24, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"], initializer_range=0.1, rope_parameters=dict(
            sliding_attention=dict(rope_type="default", rope_theta=10000.0),
            full_attention=dict(rope_type="linear", rope_theta=1000000.0, factor=8.0),
        ),
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

    from runspec.chat_templates import CHATML
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
        model_type, **{"max_position_embeddings": 4096, **settings}, vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    staging = target.parent / f".{target.name}.building-{os.getpid()}"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    publish_directory(staging, target)
