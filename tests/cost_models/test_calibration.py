"""The fitted estimator against every point measured on a real GPU (cost_models/data/calibration.csv)."""
import pytest

from cost_models.calibration import FIT, MEASUREMENTS, load_calibrations, load_measurements, sha256
from cost_models.memory import estimate_memory, static_bytes
from cost_models.step_time import estimate_step_time

POINTS = [p for p in load_measurements() if p.status == "ok"]
CALIBRATIONS = load_calibrations()


def _label(point) -> str:
    s = point.shape
    return (f"{point.run} {s.arch.name} {s.quantization} r{s.lora_rank} {'+'.join(s.lora_targets)[:20]} "
            f"{s.checkpointing} {s.micro_batch}x{s.seq_len}")


def test_the_fit_belongs_to_the_measurements():
    assert set(CALIBRATIONS) == {p.shape.engine for p in POINTS}
    for calibration in CALIBRATIONS.values():
        assert calibration.measurements_sha256 == sha256(MEASUREMENTS), (
            f"{MEASUREMENTS.name} changed since {FIT.name} was fitted: run python -m cost_models.fit"
        )


def test_every_point_records_card_engine_versions_and_date():
    assert len(POINTS) >= 30
    for point in POINTS:
        assert point.gpu.name == "H200"  # measured on an H200 (same Hopper chip as the H100, more memory/bandwidth)
        assert point.shape.engine == "train_core-hf"
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
    predicted = estimate_memory(point.shape, CALIBRATIONS[point.shape.engine].memory).reserved
    assert predicted == pytest.approx(point.peak_reserved_gib, rel=0.10)


@pytest.mark.parametrize("point", POINTS, ids=_label)
def test_step_time_within_25_percent_on_the_machine_it_was_measured_on(point):
    time = CALIBRATIONS[point.shape.engine].time
    predicted = estimate_step_time(point.shape, point.gpu, time, time.host_factors[point.run]).step
    assert predicted == pytest.approx(point.step_s, rel=0.25)


def test_exact_terms_match_the_memory_measured_after_loading():
    """Weights and fp32 adapters, counted exactly, against torch.cuda.memory_allocated() after loading
    (plus at most ~70 MB of CUDA workspaces that the first training steps leave allocated)."""
    for point in POINTS:
        static = static_bytes(point.shape)
        counted = (static["weights"] + static["embeddings_and_norms"] + static["lora_params_grads"] / 2) / 2**30
        assert 0 <= point.weights_gib - counted <= 0.08, _label(point)
