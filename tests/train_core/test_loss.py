import torch
import torch.nn.functional as F

from train_core import loss as loss_module
from train_core.loss import target_loss_sum


def test_matches_full_logits_cross_entropy_and_its_gradients(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", 7)
    torch.manual_seed(0)
    hidden = torch.randn(1, 40, 16, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False).double()
    labels = torch.randint(0, 50, (1, 40))
    labels[0, ::3] = -100
    ours = target_loss_sum(hidden, labels, head)
    (grad_ours,) = torch.autograd.grad(ours, hidden)
    reference = F.cross_entropy(head(hidden).reshape(-1, 50), labels.reshape(-1), ignore_index=-100, reduction="sum")
    (grad_reference,) = torch.autograd.grad(reference, hidden)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grad_ours, grad_reference)
