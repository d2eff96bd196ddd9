from runspec.packing import epoch_order, pack
from train_core.data.batching import IGNORE_INDEX, BatchPlan, collate
from train_core.data.tokenize import TokenizedSample


def make_samples(lengths):
    return [
        TokenizedSample(list(range(100 * i, 100 * i + n)), [False] + [j >= n // 2 for j in range(1, n)])
        for i, n in enumerate(lengths)
    ]


def test_order_is_a_function_of_seed_and_epoch():
    assert epoch_order(50, 1, 0) == epoch_order(50, 1, 0)
    assert epoch_order(50, 1, 0) != epoch_order(50, 1, 1)
    assert epoch_order(50, 1, 0) != epoch_order(50, 2, 0)
    assert sorted(epoch_order(50, 1, 3)) == list(range(50))


def test_packing_respects_capacity_and_keeps_every_sample_once():
    lengths = [5, 17, 30, 2, 9, 31, 12, 12, 1, 20] * 7
    rows = pack(lengths, epoch_order(len(lengths), 0, 0), capacity=32)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 32 for row in rows)
    assert len(rows) < len(lengths)


def test_collate_shifts_labels_within_samples_only():
    samples = make_samples([4, 3])
    batch = collate(samples)
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    expected = [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 101, 102, IGNORE_INDEX]
    assert batch.labels.tolist() == [expected]
    assert batch.num_targets == 4


def test_plan_covers_epochs_and_splits_workers():
    samples = make_samples([6, 7, 3, 9, 4, 4, 8, 2, 5, 6, 7, 1])
    plan = BatchPlan(samples, seed=5, batch_size=4, max_seq_length=10, packing=True)
    seen = [i for cursor in range(plan.steps_in_epoch(0)) for row in plan.step_rows(0, cursor) for i in row]
    assert sorted(seen) == list(range(len(samples)))
    assert plan.total_steps(epochs=2, max_steps=None) == plan.steps_in_epoch(0) + plan.steps_in_epoch(1)
    rows = plan.step_rows(0, 0)
    halves = [plan.micro_batches(rows, 1, rank, 2) for rank in range(2)]
    assert sum(b.num_targets for half in halves for b in half) == plan.target_count(rows)
