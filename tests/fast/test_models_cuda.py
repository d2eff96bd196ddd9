"""Each newly supported architecture at its real layer shape (two layers deep, random weights) on CUDA: the fast
engine's loss and LoRA gradients against transformers + PEFT in bf16, with samples long enough to pass the
sliding windows (and Phi-3.5's pretraining length, so longrope's long factors are used)."""
from __future__ import annotations

import pytest
import torch

from tests.fast.helpers import fast_loss_and_grads, hf_loss_and_grads, hf_twin, packed_batch, randomize_adapters, relative_error
from tests.fast.real_shapes import REAL_SHAPES, build
from train_core.fast.loading import AdapterSpec, load_fast_model
from train_core.fast.recompute import Recompute

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", sorted(REAL_SHAPES))
def test_real_shape_matches_transformers_peft_in_bf16(name, tmp_path):
    shape = REAL_SHAPES[name]
    path = build(shape, tmp_path / name, CUDA)
    model = load_fast_model(path, AdapterSpec.from_target_modules(16, 16, "all-linear", seed=1), CUDA)
    generator = torch.Generator().manual_seed(2)
    randomize_adapters(model, generator)
    batch = packed_batch(shape.lengths, model.spec.vocab, generator)
    loss, grads = fast_loss_and_grads(model, batch, Recompute("full", CUDA), CUDA)
    keys = list(model.adapter_state())
    twin = hf_twin(model, path, torch.bfloat16, "cuda", sorted({key.rsplit(".", 3)[-3] for key in keys}), r=16, alpha=16)
    ids, positions, labels = (t.to(CUDA) for t in batch)
    expected_loss, expected_grads = hf_loss_and_grads(twin, ids, positions, labels, keys)
    named = dict(zip(keys, model.adapter_state().values()))
    errors = {key: relative_error(named[key].grad, grad) for key, grad in zip(keys, expected_grads)}
    worst = max(errors, key=errors.get)
    print(f"{name}: loss {float(loss):.4f} vs {float(expected_loss):.4f}, worst gradient {worst} {errors[worst]:.4f}")
    assert relative_error(loss, expected_loss) < 5e-3
    # bf16 against bf16 at real widths with random weights: the q/k adapters' gradients (near-uniform attention,
    # so much cancellation) differed by 2.6-5.7 % on the H200 (docs/BENCHMARKS.md, 2026-11-29); in fp32 the same
    # comparison agrees to 1e-5 (test_model_cpu.py::test_phi35_real_layer_shape_matches_transformers_in_fp32)
    assert errors[worst] < 8e-2, worst
