"""FastEngine: the training loop's view of the fast model (loss, trainable parameters, adapter I/O)."""
from __future__ import annotations

from pathlib import Path

import torch

from runspec.fast_support import DEFAULT_CE_BUDGET_MIB, ce_chunk_rows
from train_core.cuda_setup import current_cuda_device, prefer_expandable_segments
from train_core.fast.adapter import load_peft_state, save_peft_adapter
from train_core.fast.batch import PackedBatch
from train_core.fast.checkpoint_graphs import CheckpointedGraphs
from train_core.fast.graphs import GraphedLayers, graphs_unsupported
from train_core.fast.loading import AdapterSpec, load_fast_model
from train_core.fast.merged_weights import MergedWeights
from train_core.fast.recompute import Recompute


def build_fast_engine(config, path) -> "FastEngine":
    """A FastEngine for a TrainConfig and DevicePath."""
    from train_core.models.sources import resolve_model

    resolved = resolve_model(config.model.name)
    lora = config.lora
    adapters = AdapterSpec.from_target_modules(lora.r, lora.alpha, lora.target_modules, config.training.seed)
    length = config.data.max_seq_length
    engine = FastEngine(resolved.path, adapters, torch.device("cuda"), path.activation_checkpointing,
                        cuda_graphs=path.cuda_graphs, graph_bounds=(path.micro_batch * length, length),
                        merged_weights=path.merged_weights_kept)
    engine.description = f"{resolved.description}; {engine.description}"
    return engine


class FastEngine:
    """NF4 base + LoRA with our fused kernels; the CPU/HF engine is its reference."""

    def __init__(
        self, model_path: str | Path, adapters: AdapterSpec, device: torch.device, checkpointing: str = "full",
        ce_budget_mib: int = DEFAULT_CE_BUDGET_MIB, mlp_tile_rows: int | None = None, dtype: torch.dtype = torch.bfloat16,
        host_budget_bytes: int | None = None, cuda_graphs: bool = False, graph_bounds: tuple[int, int] | None = None,
        merged_weights: bool = False,
    ) -> None:
        """`cuda_graphs` replays the decoder layers as CUDA graphs (train_core/fast/graphs.py, checkpoint_graphs.py),
        captured for `graph_bounds` = (rows, longest sample) of a micro-batch, else for the first micro-batch's.
        `merged_weights` keeps every group's merged weight between optimizer steps (train_core/fast/merged_weights.py)."""
        self.model_path = str(model_path)
        self.device = current_cuda_device(device)
        if self.device.type == "cuda":
            prefer_expandable_segments()
        self.model = load_fast_model(model_path, adapters, self.device, dtype, checkpointing)
        self.adapters = adapters.for_model(self.model.spec.model_type)
        self.recompute = Recompute(checkpointing, self.device, host_budget_bytes)
        self.ce_chunk_rows = ce_chunk_rows(self.model.spec.vocab, ce_budget_mib)
        unsupported = graphs_unsupported(self.model.spec, self.device) if cuda_graphs else None
        self.graphs = self.build_graphs(mlp_tile_rows, graph_bounds or ()) if cuda_graphs and unsupported is None else None
        self.merged = MergedWeights(self.model.layers) if merged_weights else None
        self.mlp_tile_rows = mlp_tile_rows
        self.training = True
        spec = self.model.spec
        self.description = (
            f"fast engine: {spec.model_type} {spec.layers} layers, NF4 base with merged LoRA r={adapters.r}, "
            f"activation checkpointing {checkpointing}, loss chunks of {self.ce_chunk_rows} rows"
            + (f", MLP tiles of {mlp_tile_rows} rows" if mlp_tile_rows else "")
            + (", input embedding in host memory" if self.model.embed.device != self.device else "")
            + (", layers as CUDA graphs" if self.graphs else "")
            + (f", merged weights kept between optimizer steps ({self.merged.nbytes() / 2**30:.2f} GiB)"
               if self.merged else "")
            + (f", layers eager ({unsupported})" if unsupported else "")
        )

    def build_graphs(self, mlp_tile_rows: int | None, bounds: tuple[int, ...]) -> GraphedLayers:
        """The layers as CUDA graphs: with their saved activations (none), or with recompute in backward."""
        layers, spec = self.model.layers, self.model.spec
        if self.recompute.mode == "none":
            return GraphedLayers(layers, spec, mlp_tile_rows, *bounds)
        return CheckpointedGraphs(layers, spec, mlp_tile_rows, self.recompute.offloader, *bounds)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.model.parameters()

    def loss_sum(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """Sum of token cross-entropies over labels != -100 (fp32 scalar, graph attached when grad is enabled)."""
        batch = PackedBatch.build(input_ids, position_ids, labels, self.device)
        if self.merged is not None:
            if self.training:
                self.merged.use()
            else:
                self.merged.release()
        graphs = self.graphs if self.training else None
        return self.model.loss_sum(batch, self.recompute, self.ce_chunk_rows, self.mlp_tile_rows, graphs)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """PEFT-named adapter tensors (base_model.model.<module>.lora_A.weight ...)."""
        return dict(self.model.adapter_state())

    def save_adapter(self, directory: str | Path) -> None:
        save_peft_adapter(self.model.adapter_state(), self.adapters, self.model_path, directory)

    def load_adapter_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        load_peft_state(self.model.adapter_state(), state_dict)
        self.parameters_changed()

    def parameters_changed(self) -> None:
        if self.merged is not None:
            self.merged.mark_stale()

    def train(self) -> None:
        self.training = True

    def eval(self) -> None:
        self.training = False

    def run_summary(self) -> str | None:
        parts = [self.graphs.describe()] if self.graphs is not None else []
        if self.merged is not None:
            parts.append(f"merged weights refreshed {self.merged.refreshes} times")
        return "; ".join(parts) or None
