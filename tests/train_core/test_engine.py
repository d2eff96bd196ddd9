"""The HF engine's loss: packed samples do not see each other, and accumulation is normalised by target tokens."""
import pytest
import torch

from runspec.config import load_config
from train_core.data.batching import collate
from train_core.trainer import Trainer


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from tests.train_core.helpers import write_config

    path = write_config(tmp_path_factory.mktemp("engine"), {"training": {"batch_size": 4, "micro_batch_size": 4}})
    instance = Trainer(load_config(path), log=lambda message: None)
    instance._setup()
    return instance


def test_packed_samples_are_independent(trainer):
    first, second = trainer.data.train[0], trainer.data.train[1]
    with torch.no_grad():
        alone = sum(
            float(trainer.engine.loss_sum(b.input_ids, b.position_ids, b.labels))
            for b in (collate([first]), collate([second]))
        )
        packed = collate([first, second])
        together = float(trainer.engine.loss_sum(packed.input_ids, packed.position_ids, packed.labels))
    assert together == pytest.approx(alone, rel=1e-5)


def _step_gradients(trainer, micro_batch_size):
    rows = trainer.plan.step_rows(0, 0)
    normaliser = trainer.plan.target_count(rows)
    for parameter in trainer.trainable:
        parameter.grad = None
    for batch in trainer.plan.micro_batches(rows, micro_batch_size):
        trainer._micro_step(batch, normaliser)
    return [parameter.grad.clone() for parameter in trainer.trainable]


def test_accumulation_matches_one_big_micro_batch(trainer):
    whole = _step_gradients(trainer, 4)
    accumulated = _step_gradients(trainer, 1)
    assert any(g.abs().sum() > 0 for g in whole)
    for big, small in zip(whole, accumulated):
        torch.testing.assert_close(small, big, rtol=1e-4, atol=1e-7)
