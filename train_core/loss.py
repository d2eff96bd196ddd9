"""Causal-LM loss that projects only target positions onto the vocabulary, a chunk at a time."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from train_core.data.batching import IGNORE_INDEX

CHUNK_ROWS = 1024


def _chunk_loss_sum(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, softcap: float | None):
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, reduction="sum")


def target_loss_sum(
    hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, softcap: float | None = None
) -> torch.Tensor:
    """Sum of token cross-entropies over positions whose label is not IGNORE_INDEX.

    Ignored positions are dropped before the vocabulary projection, and each chunk's logits are recomputed
    in backward instead of being kept, so at most CHUNK_ROWS x vocab logits exist at once.
    """
    selected = labels.reshape(-1) != IGNORE_INDEX
    rows = hidden.reshape(-1, hidden.shape[-1])[selected]
    targets = labels.reshape(-1)[selected]
    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        chunk = (rows[start : start + CHUNK_ROWS], head, targets[start : start + CHUNK_ROWS], softcap)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss_sum, *chunk, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(*chunk)
    return total
