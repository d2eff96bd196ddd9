"""Decoder architectures: the shapes the estimators need, from a config.json, the built-in table, or the Hub."""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path

from cost_models.errors import EstimateError
from runspec.fast_support import FUSED_MODEL_TYPES, unsupported_reason
from runspec.shapes import DecoderShape, decoder_shape

DATA = Path(__file__).with_name("data") / "architectures.csv"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
VARIANT_SUFFIX = re.compile(r"-(instruct|chat|it)$")
HUB_CONFIG_URL = "https://huggingface.co/{repo}/resolve/main/config.json"


@dataclass(frozen=True)
class Linear:
    """One linear module of a decoder layer (in and out features)."""

    name: str
    inputs: int
    outputs: int

    @property
    def params(self) -> int:
        return self.inputs * self.outputs


@dataclass(frozen=True)
class Architecture(DecoderShape):
    """A decoder shape as the estimators need it: named, with its biases, norms and where it was read."""

    name: str
    qkv_bias: bool = False
    norms_per_layer: int = 2
    source: str = ""
    fast_unsupported: str | None = None  # why the fast engine cannot run this model (runspec.fast_support)

    @cached_property
    def linears(self) -> tuple[Linear, ...]:
        """The linear modules of one decoder layer, named as in Hugging Face checkpoints."""
        h, f, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        if self.model_type in FUSED_MODEL_TYPES:
            return (
                Linear("qkv_proj", h, q + 2 * kv), Linear("o_proj", q, h),
                Linear("gate_up_proj", h, 2 * f), Linear("down_proj", f, h),
            )
        return (
            Linear("q_proj", h, q), Linear("k_proj", h, kv), Linear("v_proj", h, kv), Linear("o_proj", q, h),
            Linear("gate_proj", h, f), Linear("up_proj", h, f), Linear("down_proj", f, h),
        )

    @cached_property
    def module_names(self) -> tuple[str, ...]:
        return tuple(linear.name for linear in self.linears)

    @cached_property
    def linear_params(self) -> int:
        """Parameters of all decoder-layer linears (what 4-bit quantization applies to)."""
        return self.layers * sum(linear.params for linear in self.linears)

    @cached_property
    def other_params(self) -> int:
        """Embeddings, untied LM head, norms and biases: kept in the compute dtype."""
        head = 0 if self.tied else self.vocab * self.hidden
        norms = (self.norms_per_layer * self.layers + 1) * self.hidden
        biases = self.layers * (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return self.vocab * self.hidden + head + norms + biases

    @cached_property
    def total_params(self) -> int:
        return self.linear_params + self.other_params

    def with_layers(self, layers: int) -> "Architecture":
        """The same layer shape with another depth (calibration runs truncated copies of big models)."""
        if layers == self.layers:
            return self
        return replace(self, name=f"{self.name}[{layers}L]", layers=layers)

    def hf_config(self) -> dict:
        """A Hugging Face config.json dict with these shapes (to build a random-initialised copy)."""
        config = {
            "model_type": self.model_type, "hidden_size": self.hidden, "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim, "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied, "max_position_embeddings": 32768,
        }
        if self.model_type == "llama":
            config["attention_bias"] = self.qkv_bias
        return config


@lru_cache(maxsize=1)
def table() -> dict[str, Architecture]:
    """The built-in architectures, keyed by every lower-cased name and alias."""
    entries: dict[str, Architecture] = {}
    with open(DATA, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            arch = Architecture(
                name=row["name"], model_type=row["model_type"], hidden=int(row["hidden"]),
                intermediate=int(row["intermediate"]), layers=int(row["layers"]), heads=int(row["heads"]),
                kv_heads=int(row["kv_heads"]), head_dim=int(row["head_dim"]), vocab=int(row["vocab"]),
                tied=row["tied"] == "true", qkv_bias=row["qkv_bias"] == "true",
                norms_per_layer=int(row["norms_per_layer"]), source=f"{row['source']} ({row['date']})",
                fast_unsupported=unsupported_reason({"model_type": row["model_type"]}),
            )
            for key in [row["name"], *row["aliases"].split(";")]:
                if key:
                    entries[key.lower()] = arch
    return entries


def table_names() -> list[str]:
    return sorted({arch.name for arch in table().values()})


def from_config(config: dict, name: str, source: str) -> Architecture:
    """Read the shapes from a Hugging Face config dict; a missing field fails naming the file and field."""
    fast_unsupported = unsupported_reason(config)
    if isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", "")}

    def missing(key: str) -> EstimateError:
        return EstimateError(f"{source}: field '{key}' is missing or not a positive integer; "
                             "expected a decoder-only causal LM config.json")

    return Architecture(
        **asdict(decoder_shape(config, missing)), name=name,
        qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        norms_per_layer=4 if config.get("model_type") in ("gemma2", "gemma3", "gemma3_text") else 2, source=source,
        fast_unsupported=fast_unsupported,
    )


def _read_config_file(path: Path, name: str) -> Architecture:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise EstimateError(f"{path}: cannot read config.json ({error})") from None
    if not isinstance(config, dict):
        raise EstimateError(f"{path}: expected a JSON object")
    return from_config(config, name, str(path))


def _lookup_table(name: str) -> Architecture | None:
    entries = table()
    key = name.lower()
    if key in entries:
        return entries[key]
    short = VARIANT_SUFFIX.sub("", key.rsplit("/", 1)[-1])
    return entries.get(short)


def _from_hub(repo: str, cache: Path | None) -> Architecture:
    import urllib.request

    target = (cache / "configs" / repo / "config.json") if cache else None
    if target is not None and target.is_file():
        return _read_config_file(target, repo)
    try:
        with urllib.request.urlopen(HUB_CONFIG_URL.format(repo=repo), timeout=10) as response:
            text = response.read().decode("utf-8")
    except OSError as error:  # URLError and timeouts included
        raise EstimateError(f"model.name: cannot fetch {repo}/config.json from the Hub ({error}); "
                            f"give a local directory with config.json or one of: {', '.join(table_names())}") from None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return from_config(json.loads(text), repo, f"huggingface.co/{repo}")


def resolve_architecture(name: str, cache: Path | None = None) -> Architecture:
    """A model name as in model.name: a directory or config.json file, a table name/alias, or a Hub id (online)."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return _read_config_file(path / "config.json", path.name)
    if path.is_file() and path.name == "config.json":
        return _read_config_file(path, path.parent.name)
    known = _lookup_table(name)
    if known is not None:
        return known
    accepted = f"a local directory with config.json, a Hub id (online), or one of: {', '.join(table_names())}"
    if HUB_ID.match(name):
        cached = cache is not None and (cache / "configs" / name / "config.json").is_file()
        if cached or os.environ.get("HF_HUB_OFFLINE") != "1":
            return _from_hub(name, cache)
        raise EstimateError(f"model.name: {name!r} is not in the built-in table and HF_HUB_OFFLINE=1; "
                            f"accepted: {accepted}")
    if path.suffix == ".gguf":
        raise EstimateError(f"model.name: {name!r} is a GGUF file; the planner reads shapes from config.json: "
                            f"give {accepted}")
    raise EstimateError(f"model.name: unknown model {name!r}; accepted: {accepted}")
