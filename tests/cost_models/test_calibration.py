"""The fitted estimator against every point measured on a real GPU (cost_models/data/calibration.csv), for each
engine with its own coefficients."""
import csv

import pytest

from cost_models.catalog import gpus
from cost_models.calibration import FIT, MEASUREMENTS, load_calibrations, load_measurements, sha256
from cost_models.errors import EstimateError
from cost_models.estimate import estimate
from cost_models.fast_engine import dequant_buffer_elements
from cost_models.fit import fit_memory, point_host_ahead
from cost_models.memory import estimate_memory, static_bytes
from cost_models.shape import ENGINES, FAST_ENGINE, HF_ENGINE
from cost_models.step_time import estimate_step_time, time_features

MEASURED = [p for p in load_measurements() if p.status == "ok"]
POINTS = [p for p in MEASURED if p.split == "fit"]
HELDOUT = [p for p in MEASURED if p.split == "heldout"]
CALIBRATIONS = load_calibrations()


def gpu_named(name):
    return gpus()[name]


def _label(point) -> str:
    s = point.shape
    return (f"{point.run} {s.engine} {s.arch.name} {s.quantization} r{s.lora_rank} {'+'.join(s.lora_targets)[:20]} "
            f"{s.checkpointing}{'+graphs' if s.graphed else ''} {s.micro_batch}x{s.seq_len}"
            f"{'' if s.equal_lengths else ' unequal'}")


# Points outside a test's bound on the checked-in fit (2026-11-30, run 11:11Z added, cost_models/README.md): listed
# so that the gap stays visible; strict, so a refit that brings one back inside fails here until it is struck off.
HOST_HISTORY = "the same point reserved 5.38 GiB on 2026-11-28 and 4.51 in the 3 runs of 2026-11-30 (4.31 allocated)"
SMALL_HOST = "host-bound SmolLM2, faster than the host model says (the run's fitted Qwen2.5-3B, Phi-3: within 17 %)"
SOFTCAP = ("likely the extra launches of a Gemma 2 layer (soft-capped attention as plain ops, four norms), which the "
           "per-layer host cost fitted on Llama/Qwen2 layers leaves out")
UNEQUAL_PLAIN = ("packed samples of unequal lengths on the plain engine, whose model has no term for them (held out; "
                 "the same point with samples of one length is fitted)")
DEFAULT_ALLOCATOR = ("the default allocator's fragmentation under changing shapes (the run's first group, loaded before "
                     "any engine switched on expandable segments; peak allocated equals its twin's): "
                     "cost_models/README.md")
AFTER_GRAPHS = ("loaded after the Qwen2-1.5B group had captured CUDA graphs: 0.19 GiB more allocated than counted "
                "(0.07 in the default run's Llama group)")
KNOWN_MISSES = {
    "fit_memory": {
        "2026-11-30T06:49Z train_core-hf qwen2-0.5b bf16 r8 q_proj+k_proj+v_proj full 2x8192": HOST_HISTORY,
        "2026-11-30T10:39Z train_core-hf qwen2-0.5b bf16 r8 q_proj+k_proj+v_proj full 2x8192": HOST_HISTORY,
    },
    "heldout_upper_bound": {
        "2026-11-30T10:41Z train_core-fast smollm2-135m nf4 r16 q_proj+k_proj+v_proj full 8x1024":
            "1.90 GiB needed, upper bound 1.86: the smallest model measured",
        "2026-11-30T11:11Z train_core-hf llama-3-8b[8L] bf16 r8 q_proj+k_proj+v_proj full 2x8192 unequal":
            f"15.65 GiB needed, upper bound 14.04: {DEFAULT_ALLOCATOR}",
        "2026-11-30T11:11Z train_core-hf llama-3-8b[8L] bf16 r8 q_proj+k_proj+v_proj none 2x2048 unequal":
            f"18.58 GiB needed, upper bound 16.74: {DEFAULT_ALLOCATOR}",
    },
    "heldout_memory": {
        "2026-11-30T10:41Z train_core-fast smollm2-135m nf4 r16 q_proj+k_proj+v_proj full 8x1024":
            "1.09 GiB measured, 0.95 predicted (-13.3 %): the smallest model measured",
        "2026-11-30T11:11Z train_core-hf llama-3-8b[8L] bf16 r8 q_proj+k_proj+v_proj full 2x8192 unequal":
            f"-17.8 % (14.88 GiB, 13.21 with samples of one length): {DEFAULT_ALLOCATOR}",
        "2026-11-30T11:11Z train_core-hf llama-3-8b[8L] bf16 r8 q_proj+k_proj+v_proj none 2x2048 unequal":
            f"-17.4 % (17.81 GiB, 15.04 with samples of one length): {DEFAULT_ALLOCATOR}",
        "2026-11-30T11:11Z train_core-hf qwen2-0.5b bf16 r8 q_proj+k_proj+v_proj full 2x8192 unequal":
            f"+16.4 %: {HOST_HISTORY}",
    },
    "heldout_time": {
        "2026-11-29T19:58Z train_core-hf gemma-2-2b nf4 r16 q_proj+k_proj+v_proj full 1x2048": "-23.3 %",
        "2026-11-29T19:58Z train_core-hf gemma-2-2b nf4 r16 q_proj+k_proj+v_proj none 2x1024": "-28.0 %",
        "2026-11-29T20:03Z train_core-hf gemma-2-2b nf4 r16 q_proj+k_proj+v_proj full 4x1024": "-25.1 %",
        "2026-11-30T10:41Z train_core-fast smollm2-1.7b nf4 r16 q_proj+k_proj+v_proj none 2x2048":
            f"+38.7 %: {SMALL_HOST}",
        "2026-11-30T10:41Z train_core-fast smollm2-135m nf4 r16 q_proj+k_proj+v_proj none 4x2048":
            f"+32.0 %: {SMALL_HOST}",
        "2026-11-30T10:41Z train_core-fast smollm2-135m nf4 r16 q_proj+k_proj+v_proj full 8x1024":
            f"+23.4 %: {SMALL_HOST}",
        "2026-11-30T10:41Z train_core-fast smollm2-135m nf4 r16 q_proj+k_proj+v_proj offload 2x4096":
            f"+33.6 %: {SMALL_HOST}",
        "2026-11-30T10:41Z train_core-fast gemma-2-2b nf4 r16 q_proj+k_proj+v_proj full 1x2048": f"-27.1 %: {SOFTCAP}",
        "2026-11-30T10:43Z train_core-fast gemma-2-2b nf4 r16 q_proj+k_proj+v_proj full 4x1024": f"-26.3 %: {SOFTCAP}",
        "2026-11-30T10:43Z train_core-fast gemma-2-2b nf4 r16 q_proj+k_proj+v_proj none 4x512": f"-31.1 %: {SOFTCAP}",
        "2026-11-30T10:43Z train_core-fast qwen2.5-7b nf4 r16 q_proj+k_proj+v_proj none 1x2048":
            "-29.5 %: 0.373 s measured, 0.272 s for the same point at 06:57Z (its neighbours repeated within 3 %)",
        "2026-11-30T11:11Z train_core-hf llama-3-8b[8L] bf16 r8 q_proj+k_proj+v_proj none 2x2048 unequal":
            f"-53.3 %: median 0.238 s, fastest step 0.131 (its twin of one length: 0.130 at 10:39Z): {UNEQUAL_PLAIN}",
        "2026-11-30T11:11Z train_core-hf qwen2-1.5b bf16 r64 q_proj+k_proj+v_proj full 2x2048 unequal":
            f"-33.5 %: median 0.536 s, fastest step 0.357 (its twin of one length: 0.360 at 10:39Z): {UNEQUAL_PLAIN}",
        "2026-11-30T11:11Z train_core-hf qwen2-0.5b bf16 r8 q_proj+k_proj+v_proj full 2x8192 unequal":
            f"-23.1 %: 0.726 s for 11 % fewer tokens than its fitted twin of one length (0.725 s): {UNEQUAL_PLAIN}",
    },
    "heldout_interval": {
        "2026-11-30T11:11Z train_core-hf llama-3-8b[8L] bf16 r8 q_proj+k_proj+v_proj none 2x2048 unequal":
            f"0.238 s, interval 0.07-0.17: {UNEQUAL_PLAIN}",
        "2026-11-30T11:11Z train_core-hf qwen2-1.5b bf16 r64 q_proj+k_proj+v_proj full 2x2048 unequal":
            f"0.536 s, interval 0.24-0.53: {UNEQUAL_PLAIN}",
    },
    "loaded_weights": {
        f"2026-11-30T10:40Z train_core-fast llama-3-8b[8L] nf4 r16 q_proj+k_proj+v_proj {mode}": AFTER_GRAPHS
        for mode in ("none+graphs 2x2048", "none 2x2048", "offload+graphs 4x2048")
    },
}


def cases(points, misses: str = ""):
    """The points as test cases, a known miss of `misses` marked as an expected (strict) failure."""
    known = KNOWN_MISSES.get(misses, {})
    return [pytest.param(p, id=_label(p), marks=[pytest.mark.xfail(strict=True, reason=known[_label(p)])]
                         if _label(p) in known else []) for p in points]


def test_the_fit_belongs_to_the_measurements():
    assert set(CALIBRATIONS) == {p.shape.engine for p in POINTS} == set(ENGINES)
    for calibration in CALIBRATIONS.values():
        assert calibration.measurements_sha256 == sha256(MEASUREMENTS), (
            f"{MEASUREMENTS.name} changed since {FIT.name} was fitted: run python -m cost_models.fit"
        )


def test_every_point_records_card_engine_versions_and_date():
    assert len(POINTS) >= 30
    for point in MEASURED:
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


@pytest.mark.parametrize("point", cases(POINTS, "fit_memory"))
def test_peak_reserved_vram_within_10_percent(point):
    """Against the job's own peak: the measured one less the fast engine's dequantization buffers that an earlier,
    bigger model left in the bench process (counted exactly; at most 0.33 GiB)."""
    calibration = CALIBRATIONS[point.shape.engine]
    ahead = point_host_ahead(point, calibration.time)
    predicted = estimate_memory(point.shape, calibration.memory, ahead).reserved
    assert point.carried_gib <= 0.33
    assert predicted == pytest.approx(point.job_reserved_gib, rel=0.10)


@pytest.mark.parametrize("point", POINTS, ids=_label)
def test_step_time_within_25_percent_on_the_machine_it_was_measured_on(point):
    time = CALIBRATIONS[point.shape.engine].time
    predicted = estimate_step_time(point.shape, point.gpu, time, time.host_factors[point.run]).step
    assert predicted == pytest.approx(point.step_s, rel=0.25)


def test_heldout_points_span_architectures_modes_lengths_and_micro_batches():
    """The points the fit never saw: new architectures (and two measured ones at a new depth), every mode; besides
    them, only the plain engine's rows of unequal samples, which its model does not describe."""
    unequal_plain = [p for p in HELDOUT if p.shape.engine == HF_ENGINE and not p.shape.equal_lengths]
    assert [p.run for p in unequal_plain] == ["2026-11-30T11:11Z"] * 5
    shapes = [p.shape for p in HELDOUT if p not in unequal_plain]
    assert len(HELDOUT) >= 12
    assert len({s.arch.name for s in shapes}) >= 4
    assert {s.checkpointing for s in shapes} == {"none", "full", "offload"}
    assert len({s.seq_len for s in shapes}) >= 3 and len({s.micro_batch for s in shapes}) >= 3
    fitted = {p.shape.arch.name for p in POINTS}
    assert not {s.arch.name for s in shapes} & fitted


@pytest.mark.parametrize("point", cases(HELDOUT, "heldout_upper_bound"))
def test_heldout_peak_never_exceeds_the_upper_bound(point):
    e = estimate(point.shape, point.gpu, CALIBRATIONS[point.shape.engine])
    measured = point.job_reserved_gib + CALIBRATIONS[point.shape.engine].memory.cuda_context_gib
    assert measured <= e.need_upper_gib
    assert e.need_gib <= e.need_upper_gib


@pytest.mark.parametrize("point", cases(HELDOUT, "heldout_memory"))
def test_heldout_peak_reserved_within_10_percent(point):
    """As the issue asks; the plan places on the upper bound above, not on this point."""
    predicted = estimate(point.shape, point.gpu, CALIBRATIONS[point.shape.engine]).memory.reserved
    assert predicted == pytest.approx(point.job_reserved_gib, rel=0.10)


@pytest.mark.parametrize("point", cases(HELDOUT, "heldout_time"))
def test_heldout_step_time_within_20_percent(point):
    """As a plan states it: at the calibrated machines' mean host speed, not the held-out run's own."""
    e = estimate(point.shape, point.gpu, CALIBRATIONS[point.shape.engine])
    assert e.time.step == pytest.approx(point.step_s, rel=0.20)


@pytest.mark.parametrize("point", cases(HELDOUT, "heldout_interval"))
def test_heldout_step_time_inside_its_interval(point):
    e = estimate(point.shape, point.gpu, CALIBRATIONS[point.shape.engine])
    assert e.step_low <= point.step_s <= e.step_high


def test_distance_flags_what_was_not_measured():
    """An architecture family an engine never ran, or a model far outside the measured sizes, is uncalibrated;
    a measured family near measured sizes is not. Every other GPU is a transfer, so uncalibrated too."""
    by_arch = {p.shape.arch.name: p for p in HELDOUT}
    def flag(name, card=None):
        p = by_arch[name]
        gpu = p.gpu if card is None else gpu_named(card)
        return estimate(p.shape, gpu, CALIBRATIONS[p.shape.engine]).calibrated
    assert not flag("mistral-7b") and not flag("gemma-2-2b") and not flag("smollm2-135m")
    assert flag("smollm2-1.7b") and flag("llama-3-8b")
    assert not flag("smollm2-1.7b", "L4") and not flag("llama-3-8b", "H100")


def test_intervals_widen_with_distance():
    p = next(p for p in HELDOUT if p.shape.arch.name == "smollm2-1.7b")
    calibration = CALIBRATIONS[p.shape.engine]
    near = estimate(p.shape, p.gpu, calibration)
    far = estimate(p.shape, gpu_named("L4"), calibration)
    assert far.distance.time == near.distance.time + 1
    assert far.step_high / far.time.step > near.step_high / near.time.step


@pytest.mark.parametrize("point", cases(MEASURED, "loaded_weights"))
def test_exact_terms_match_the_memory_measured_after_loading(point):
    """Weights and fp32 adapters, counted exactly, against torch.cuda.memory_allocated() after loading (plus the
    dequantization buffers and up to 0.11 GiB of CUDA workspaces and tensors that earlier groups left allocated).
    The bench loads a group's model once, with the input embedding on the GPU, and moves it per mode afterwards."""
    static = static_bytes(point.shape.with_(embedding_measured_on_gpu=True))
    counted = (static["weights"] + static["embeddings_and_norms"] + static["lora_params_grads"] / 2) / 2**30
    assert 0 <= point.weights_gib - point.held_buffers_gib - counted <= 0.11


def test_each_engine_has_coefficients_only_for_what_it_does():
    hf, fast = CALIBRATIONS["train_core-hf"], CALIBRATIONS["train_core-fast"]
    for absent in ("saved_float_base", "mask_per_layer", "working_float_base"):
        assert getattr(fast.memory, absent) is None and getattr(hf.memory, absent) is not None
    for absent in ("host_layer_pass_float", "masked_attention_efficiency"):
        assert getattr(fast.time, absent) is None and getattr(hf.time, absent) is not None
    assert hf.time.varlen_attention_efficiency is None and fast.time.varlen_attention_efficiency is not None


def test_both_attention_paths_of_the_fast_engine_are_fitted_and_varlen_is_slower_per_flop():
    """Run 11:11Z packs unequal samples into its rows of several (varlen flash attention); its rows of one sample and
    every older row hold samples of one length (one batched SDPA call). Both are fitted, the varlen path slower."""
    assert {p.shape.equal_lengths for p in POINTS if p.shape.engine == FAST_ENGINE} == {True, False}
    time = CALIBRATIONS[FAST_ENGINE].time
    assert 0 < time.varlen_attention_efficiency < time.causal_attention_efficiency


def test_a_memory_feature_no_fitted_point_has_gets_no_scale():
    """Rows without checkpointed graphs (as before 2026-11-30T10:40Z) fit graph_pool at 0, not a singular system."""
    eager = [p for p in POINTS if p.shape.engine == FAST_ENGINE and not p.shape.graphed]
    assert fit_memory(eager, CALIBRATIONS[FAST_ENGINE].time).graph_pool == 0


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



def _measured_rows() -> tuple[list[dict], list[str]]:
    """The checked-in rows, and their columns before cuda_graphs and equal_lengths."""
    with open(MEASUREMENTS, encoding="utf-8", newline="") as handle:
        rows = [{column: value for column, value in row.items() if column not in ("cuda_graphs", "equal_lengths")}
                for row in csv.DictReader(handle)]
    return rows, list(rows[0])


def _write_rows(path, rows, columns):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_graphed_rows_load_as_graphed_shapes_and_older_rows_as_eager(tmp_path):
    """The cuda_graphs column (bench/calibrate_estimator.py's graphs matrix) sets the shape's cuda_graphs, so the
    fast engine's NF4 Llama/Qwen2 rows are predicted graphed; rows from before the column read as eager."""
    rows, columns = _measured_rows()
    qwen = next(r for r in rows if r["engine"] == "train_core-fast" and r["arch"] == "qwen2-1.5b"
                and r["checkpointing"] == "none")
    llama = next(r for r in rows if r["engine"] == "train_core-fast" and r["arch"] == "llama-3-8b")
    hf = next(r for r in rows if r["engine"] == "train_core-hf" and r["arch"] == "qwen2-1.5b")
    old = tmp_path / "old.csv"
    _write_rows(old, [qwen, llama], columns)
    assert [p.shape.graphed for p in load_measurements(old)] == [False, False]
    new = tmp_path / "new.csv"
    flagged = [{**qwen, "cuda_graphs": "True"}, {**llama, "cuda_graphs": "True"}, {**hf, "cuda_graphs": "True"},
               {**qwen, "cuda_graphs": "False"}, {**qwen, "cuda_graphs": ""}]
    _write_rows(new, flagged, [*columns, "cuda_graphs"])
    points = load_measurements(new)
    assert [p.shape.graphed for p in points] == [True, True, False, False, False]  # the plain engine has no graphs
    time = CALIBRATIONS["train_core-fast"].time
    graphed, eager = (estimate_step_time(p.shape, p.gpu, time).step for p in (points[0], points[3]))
    assert graphed < eager  # no host work per layer when graphed


def test_rows_before_the_equal_lengths_column_read_as_equal_and_unequal_ones_at_the_mean_sample(tmp_path):
    """Every row before the column packed samples of one length; the bench's rows of several samples now hold
    unequal ones (mean ± 1/8), some rows short, read at the bench's mean sample length (seq_len / samples_per_row)."""
    rows, columns = _measured_rows()
    packed = next(r for r in rows if r["run"] == "2026-11-30T11:11Z" and r["engine"] == FAST_ENGINE
                  and r["samples_per_row"] == "4")
    old = tmp_path / "old.csv"
    _write_rows(old, [packed], columns)
    new = tmp_path / "new.csv"
    _write_rows(new, [{**packed, "equal_lengths": flag} for flag in ("True", "False", "")], [*columns, "equal_lengths"])
    points = load_measurements(old) + load_measurements(new)
    assert [p.shape.equal_lengths for p in points] == [True, True, False, True]
    unequal = points[2].shape
    assert unequal.tokens_per_micro_batch < unequal.max_tokens_per_micro_batch  # rows left short by the packing
    assert unequal.mean_sample_tokens == pytest.approx(int(packed["seq_len"]) // 4)
    features = time_features(unequal, points[2].gpu)
    assert features["varlen_attention"] > 0 and features["causal_attention"] == 0


def test_a_row_longer_than_its_header_or_an_unknown_flag_is_refused(tmp_path):
    rows, columns = _measured_rows()
    row = next(r for r in rows if r["engine"] == "train_core-fast")
    path = tmp_path / "calibration.csv"
    _write_rows(path, [{**row, "cuda_graphs": "yes"}], [*columns, "cuda_graphs"])
    with pytest.raises(EstimateError, match="cuda_graphs is 'yes'"):
        load_measurements(path)
    _write_rows(path, [{**row, "equal_lengths": "1"}], [*columns, "equal_lengths"])
    with pytest.raises(EstimateError, match="equal_lengths is '1'"):
        load_measurements(path)
    _write_rows(path, [], columns)
    with open(path, "a", encoding="utf-8", newline="") as handle:  # a new bench row under an older header
        csv.writer(handle).writerow([row[column] for column in columns] + ["True"])
    with pytest.raises(EstimateError, match="more fields than the header"):
        load_measurements(path)
