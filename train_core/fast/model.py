"""The fast causal LM: frozen embedding and head, NF4 decoder layers with LoRA, fused loss over targets only."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train_core.fast.arch import ArchSpec
from train_core.fast.batch import PackedBatch
from train_core.fast.graphs import GraphedLayers
from train_core.fast.layer import DecoderLayer, module_path
from train_core.fast.recompute import Recompute
from train_core.kernels.cross_entropy import linear_cross_entropy
from train_core.kernels.rms_norm import rms_norm


@dataclass
class FastCausalLM:
    spec: ArchSpec
    embed: torch.Tensor  # (vocab, hidden), frozen; in host memory when the run offloads and the head is separate
    head: torch.Tensor  # (vocab, hidden), frozen; the embedding itself when tied
    final_norm: torch.Tensor
    layers: list[DecoderLayer]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def adapter_state(self) -> dict[str, torch.nn.Parameter]:
        """Adapter tensors under PEFT's saved key names (base_model.model.<module>.lora_A.weight)."""
        state = {}
        for index, layer in enumerate(self.layers):
            for projection, (a, b) in layer.adapters.items():
                prefix = f"base_model.model.{module_path(index, projection)}"
                state[f"{prefix}.lora_A.weight"] = a
                state[f"{prefix}.lora_B.weight"] = b
        return state

    def embeddings(self, batch: PackedBatch) -> torch.Tensor:
        device = batch.input_ids.device
        if self.embed.device != device:  # gathered on the host into pinned memory, then copied without a sync
            x = torch.empty((batch.tokens, self.embed.shape[1]), dtype=self.embed.dtype, pin_memory=True)
            torch.index_select(self.embed, 0, batch.host_input_ids, out=x)
            x = x.to(device, non_blocking=True)
        else:
            x = F.embedding(batch.input_ids, self.embed)
        if self.spec.embed_scale is not None:  # Gemma: times sqrt(hidden) rounded to the model's dtype
            x = x * torch.tensor(self.spec.embed_scale, dtype=x.dtype, device=x.device)
        return x

    def hidden_states(
        self, batch: PackedBatch, recompute: Recompute, mlp_tile_rows: int | None = None, graphs: GraphedLayers | None = None,
    ) -> torch.Tensor:
        """(tokens, hidden) output of the last decoder layer; through the CUDA graphs when given and the batch fits."""
        x = self.embeddings(batch)
        if graphs is not None and torch.is_grad_enabled():
            replayed = graphs.run(x, batch)
            if replayed is not None:
                return replayed
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):

            def run(inputs: torch.Tensor, recomputing: bool, layer: DecoderLayer = layer) -> torch.Tensor:
                return layer.forward(inputs, batch, self.spec, mlp_tile_rows, recomputing)

            x = recompute(index, index == last, run, x, layer.parameters())
        return x

    def loss_sum(
        self, batch: PackedBatch, recompute: Recompute, ce_chunk_rows: int, mlp_tile_rows: int | None = None,
        graphs: GraphedLayers | None = None,
    ) -> torch.Tensor:
        """Sum of token cross-entropies over the batch's targets (fp32 scalar, graph attached)."""
        hidden = self.hidden_states(batch, recompute, mlp_tile_rows, graphs)
        if batch.targets.numel() == 0:
            return hidden[:0].float().sum()
        selected = rms_norm(hidden.index_select(0, batch.target_rows), self.final_norm, self.spec.eps, self.spec.gemma)
        return linear_cross_entropy(selected, self.head, batch.targets, ce_chunk_rows, self.spec.final_softcap)
