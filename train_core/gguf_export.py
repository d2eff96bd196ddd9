"""Write a merged Llama / Mistral / Qwen2 model as a GGUF file through the `gguf` package's GGUFWriter.

Tensor names come from gguf's own HF -> GGUF name map; Llama and Mistral query/key weights are permuted
into llama.cpp's rotary layout (transformers' GGUF loader permutes them back). Matrices are stored as
f16, bf16, f32 or q8_0; norms and biases stay f32, as llama.cpp's converter keeps them. The tokenizer is
written as a byte-level BPE vocabulary ("gpt2") with its merges, special tokens and chat template, which is
what the tokenizers of these models are. The file loads with
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)` (tested); names, layout and metadata keys follow
llama.cpp's converter, but llama.cpp itself is not run in the tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from train_core.errors import ModelSourceError

GGUF_TYPES = ("f16", "bf16", "f32", "q8_0")
ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2"}
PRE_TOKENIZERS = {"qwen2": "qwen2"}  # how the tokenizer splits text before BPE; the GPT-2 split otherwise
CONTROL, NORMAL, USER_DEFINED = 3, 1, 4


def gguf_name(model, quantisation: str) -> str:
    return f"{model.config.model_type}-{quantisation}.gguf"


def write_gguf(model, tokenizer, path: Path, quantisation: str = "f16") -> Path:
    """Write `model` (merged, any float dtype) and `tokenizer` to the GGUF file `path`."""
    import gguf

    config = model.config
    if config.model_type not in ARCHITECTURES:
        raise ModelSourceError(
            f"--gguf: {config.model_type} models are not supported; accepted: {', '.join(ARCHITECTURES)}"
        )
    if quantisation not in GGUF_TYPES:
        raise ModelSourceError(f"--gguf: unknown type {quantisation!r}; accepted: {', '.join(GGUF_TYPES)}")
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[config.model_type])
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    _write_hyperparameters(writer, config)
    _write_tokenizer(writer, tokenizer, config.model_type)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelSourceError(f"--gguf: no GGUF name for tensor {hf_name} of this {config.model_type} model")
        data = _rotary_layout(hf_name, tensor.detach().float().cpu(), config).numpy()
        _add_tensor(writer, gguf, name, data, quantisation)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _write_hyperparameters(writer, config) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(str(getattr(config, "_name_or_path", "") or config.model_type))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)


def _rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return parameters.get("rope_theta") or getattr(config, "rope_theta", 10000.0)


def _write_tokenizer(writer, tokenizer, model_type: str) -> None:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise ModelSourceError(f"--gguf: only byte-level BPE tokenizers are supported, not {backend['model']['type']}")
    vocab: dict[str, int] = dict(backend["model"]["vocab"])
    special = {token["content"]: token["id"] for token in backend.get("added_tokens", [])}
    vocab.update(special)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{index}]" for index in range(size)]
    types = [USER_DEFINED] * size
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = CONTROL if token in special else NORMAL
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS.get(model_type, "default"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _rotary_layout(hf_name: str, tensor: torch.Tensor, config) -> torch.Tensor:
    """llama.cpp's order of the rotary halves for Llama/Mistral q_proj and k_proj rows."""
    if config.model_type == "qwen2" or not hf_name.endswith(("q_proj.weight", "k_proj.weight")):
        return tensor
    heads = config.num_attention_heads if hf_name.endswith("q_proj.weight") else config.num_key_value_heads
    rows = tensor.shape[0]
    return tensor.reshape(heads, 2, rows // heads // 2, *tensor.shape[1:]).swapaxes(1, 2).reshape(tensor.shape)


def _add_tensor(writer, gguf, name: str, data: np.ndarray, quantisation: str) -> None:
    if data.ndim == 1 or quantisation == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif quantisation == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        kind = gguf.GGMLQuantizationType.BF16 if quantisation == "bf16" else gguf.GGMLQuantizationType.Q8_0
        if kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            writer.add_tensor(name, data.astype(np.float16))
            return
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
