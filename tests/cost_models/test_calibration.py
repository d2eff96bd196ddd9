"""The fitted estimator against every point measured on a real GPU (cost_models/data/calibration.csv), for each
engine with its own coefficients."""
import csv

import pytest

from cost_models.calibration import FIT, MEASUREMENTS, load_calibrations, load_measurements, sha256
from cost_models.fast_engine import dequant_buffer_elements
from cost_models.memory import estimate_memory, static_bytes
from cost_models.shape import ENGINES
from cost_models.step_time import estimate_step_time

POINTS = [p for p in load_measurements() if p.status == "ok"]
CALIBRATIONS = load_calibrations()


def _label(point) -> str:
    s = point.shape
    return (f"{point.run} {s.engine} {s.arch.name} {s.quantization} r{s.lora_rank} {'+'.join(s.lora_targets)[:20]} "
            f"{s.checkpointing} {s.micro_batch}x{s.seq_len}")


def test_the_fit_belongs_to_the_measurements():
    assert set(CALIBRATIONS) == {p.shape.engine for p in POINTS} == set(ENGINES)
    for calibration in CALIBRATIONS.values():
        assert calibration.measurements_sha256 == sha256(MEASUREMENTS), (
            f"{MEASUREMENTS.name} changed since {FIT.name} was fitted: run python -m cost_models.fit"
        )


def test_every_point_records_card_engine_versions_and_date():
    assert len(POINTS) >= 30
    for point in POINTS:
        assert point.gpu.name == "H200"  # measured on an H200 (same Hopper chip as the H100, more memory/bandwidth)
    with open(MEASUREMENTS, encoding="utf-8") as handle:
        header = handle.readline()
    for column in ("date", "card", "engine", "versions", "peak_allocated_gib", "peak_reserved_gib", "step_s"):
        assert column in header


def test_matrix_spans_the_issue_ranges():
    shapes = [p.shape for p in POINTS]
    assert {s.quantization for s in shapes} == {"nf4", "bf16"}
    assert {s.checkpointing for s in shapes} == {"none", "full", "offload"}
    assert min(s.seq_len for s in shapes) <= 512 and max(s.seq_len for s in shapes) >= 8192
    assert min(s.micro_batch for s in shapes) == 1 and max(s.micro_batch for s in shapes) >= 8
    assert min(s.lora_rank for s in shapes) <= 8 and max(s.lora_rank for s in shapes) >= 64
    assert len({s.arch.name for s in shapes}) >= 4


@pytest.mark.parametrize("point", POINTS, ids=_label)
def test_peak_reserved_vram_within_10_percent(point):
    """Against the job's own peak: the measured one less the fast engine's dequantization buffers that an earlier,
    bigger model left in the bench process (counted exactly; at most 0.33 GiB)."""
    predicted = estimate_memory(point.shape, CALIBRATIONS[point.shape.engine].memory).reserved
    assert point.carried_gib <= 0.33
    assert predicted == pytest.approx(point.job_reserved_gib, rel=0.10)


@pytest.mark.parametrize("point", POINTS, ids=_label)
def test_step_time_within_25_percent_on_the_machine_it_was_measured_on(point):
    time = CALIBRATIONS[point.shape.engine].time
    predicted = estimate_step_time(point.shape, point.gpu, time, time.host_factors[point.run]).step
    assert predicted == pytest.approx(point.step_s, rel=0.25)


def test_exact_terms_match_the_memory_measured_after_loading():
    """Weights and fp32 adapters, counted exactly, against torch.cuda.memory_allocated() after loading (plus the
    dequantization buffers and under 90 MB of CUDA workspaces and tensors that earlier groups left allocated)."""
    for point in POINTS:
        static = static_bytes(point.shape)
        counted = (static["weights"] + static["embeddings_and_norms"] + static["lora_params_grads"] / 2) / 2**30
        assert 0 <= point.weights_gib - point.held_buffers_gib - counted <= 0.085, _label(point)


def test_each_engine_has_coefficients_only_for_what_it_does():
    hf, fast = CALIBRATIONS["train_core-hf"], CALIBRATIONS["train_core-fast"]
    for absent in ("saved_float_base", "mask_per_layer", "working_float_base"):
        assert getattr(fast.memory, absent) is None and getattr(hf.memory, absent) is not None
    for absent in ("host_layer_pass_float", "masked_attention_efficiency"):
        assert getattr(fast.time, absent) is None and getattr(hf.time, absent) is not None


def test_replaying_a_run_recovers_the_dequant_buffers_its_process_held(tmp_path):
    with open(MEASUREMENTS, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    llama = next(r for r in rows if r["engine"] == "train_core-fast" and r["arch"] == "llama-3-8b")
    small = next(r for r in rows if r["engine"] == "train_core-fast" and r["arch"] == "qwen2-0.5b")
    hf = next(r for r in rows if r["engine"] == "train_core-hf" and r["arch"] == "qwen2-0.5b")
    order = [(llama, "A"), (small, "A"), ({**small, "seq_len": "1024"}, "A"), (hf, "A"), (small, "B")]
    path = tmp_path / "calibration.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "run": run} for row, run in order)
    first, after_llama, same_group, hf_after, other_run = load_measurements(path)
    big = dequant_buffer_elements(first.shape.arch)
    assert first.held_buffers == (0, 0) and first.carried_gib == 0
    assert after_llama.held_buffers == same_group.held_buffers == big  # both rows of one loaded model
    own = 2 * sum(dequant_buffer_elements(after_llama.shape.arch)) / 2**30
    assert after_llama.carried_gib == pytest.approx(2 * sum(big) / 2**30 - own)
    assert hf_after.carried_gib == pytest.approx(2 * sum(big) / 2**30)  # the HF engine has no buffers of its own
    assert other_run.held_buffers == (0, 0)
