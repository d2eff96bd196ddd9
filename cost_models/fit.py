"""Fit the estimator's coefficients to calibration.csv and write calibration_fit.json.

    python -m cost_models.fit            # refit after bench/calibrate_estimator.py added rows

Each engine is fitted on its own points, with only the features and parameters it has. Memory: weighted
linear least squares (relative error, no negative scales) of measured peak reserved bytes (less what the
bench process carried from earlier groups) on the byte counts of memory.memory_features, after the exactly
counted weights, buffers and optimizer state. Time: Nelder-Mead on the 4th power of log step-time errors (it
weighs the worst points) over bounded host, efficiency and overlap parameters, with one host-speed factor
per calibration run (each run is a different machine). Accuracy is reported in-sample and with each
architecture left out of the fit.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence


from cost_models.calibration import (
    FIT, MEASUREMENTS, Calibration, Measurement, MemoryCoefficients, TimeCoefficients, load_measurements, sha256,
)
from cost_models.memory import GIB, counted_peak_bytes, estimate_memory, memory_features, reserved_upper_gib, static_bytes
from cost_models.shape import FAST_ENGINE, HF_ENGINE
from cost_models.step_time import estimate_step_time, host_ahead, step_from_features, time_features

TIME_BOUNDS = {  # name: (low, high); host terms are seconds
    "host_layer_pass_4bit": (1e-4, 0.05), "host_layer_pass_float": (1e-4, 0.05), "host_per_target": (0.0, 0.01),
    "host_loss_chunk": (0.0, 0.01), "host_per_token": (0.0, 2e-6), "host_micro_batch": (0.0, 0.2),
    "host_lora_tensor": (0.0, 1e-3), "gemm_efficiency": (0.2, 0.85),
    "masked_attention_efficiency": (0.05, 0.7), "causal_attention_efficiency": (0.1, 0.75),
    "varlen_attention_efficiency": (0.05, 0.75),
    "elementwise_traffic": (0.5, 20.0), "overlap": (1.5, 12.0), "offload_gbs": (2.0, 60.0),
}
HOST_FACTOR_BOUNDS = (0.6, 1.8)
ABSENT_TIME_PARAMETERS = {  # work an engine never does: kept out of its fit, stored as null
    FAST_ENGINE: ("host_layer_pass_float", "masked_attention_efficiency"),  # NF4 base only; attends per sample
    HF_ENGINE: ("varlen_attention_efficiency",),  # a dense mask for packed samples, whatever their lengths
}


def time_parameters(engine: str) -> list[str]:
    return [name for name in TIME_BOUNDS if name not in ABSENT_TIME_PARAMETERS.get(engine, ())]


def solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (small dense systems)."""
    n = len(vector)
    a = [row[:] + [vector[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        if abs(a[col][col]) < 1e-300:
            raise ValueError("singular system")
        for r in range(col + 1, n):
            factor = a[r][col] / a[col][col]
            for k in range(col, n + 1):
                a[r][k] -= factor * a[col][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (a[r][n] - sum(a[r][k] * x[k] for k in range(r + 1, n))) / a[r][r]
    return x


def nonnegative_least_squares(rows: list[list[float]], targets: list[float], weights: list[float]) -> list[float]:
    """Weighted least squares; features that no row has, or whose coefficient comes out negative, get 0 and the
    rest are refit."""
    active = [j for j in range(len(rows[0])) if any(row[j] for row in rows)]
    while True:
        scale = [max(abs(row[j]) for row in rows) or 1.0 for j in active]
        pairs = list(zip(active, scale))
        xtx = [[sum(w * w * row[i] * row[j] / (si * sj) for row, w in zip(rows, weights)) for j, sj in pairs]
               for i, si in pairs]
        xty = [sum(w * w * row[i] * t / si for row, t, w in zip(rows, targets, weights)) for i, si in pairs]
        solution = [value / s for value, s in zip(solve(xtx, xty), scale)]
        negative = [j for j, value in zip(active, solution) if value < 0]
        if not negative:
            coefficients = [0.0] * len(rows[0])
            for j, value in zip(active, solution):
                coefficients[j] = value
            return coefficients
        active = [j for j in active if j not in negative]


def point_host_ahead(point: Measurement, time: TimeCoefficients) -> float:
    """How far the host ran ahead of the GPU at a measured point (only offload's held inputs depend on it)."""
    if point.shape.checkpointing != "offload":
        return 1.0
    return round(host_ahead(point.shape, point.gpu, time, time.host_factors.get(point.run)), 3)


def fit_memory(points: Sequence[Measurement], time: TimeCoefficients) -> MemoryCoefficients:
    """Scales of the features the points' engine has (memory_features returns no others), then the margin
    that puts every fitted point under the upper bound (memory.reserved_upper_gib at distance 0)."""
    names = list(memory_features(points[0].shape))
    rows = []
    for p in points:
        features, ahead = memory_features(p.shape), point_host_ahead(p, time)
        rows.append([features[name] * (ahead if name == "offload_pending" else 1.0) for name in names])
    targets = [p.job_reserved_gib * GIB - sum(static_bytes(p.shape).values()) - counted_peak_bytes(p.shape)
               for p in points]
    weights = [1.0 / (p.job_reserved_gib * GIB) for p in points]
    values = nonnegative_least_squares(rows, targets, weights)
    context = sum(p.context_gib for p in points) / len(points)
    coefficients = MemoryCoefficients(**dict(zip(names, values)), cuda_context_gib=context)
    worst = max(p.job_reserved_gib / reserved_upper_gib(p.shape, coefficients, 0.0) - 1 for p in points)
    return replace(coefficients, margin=round(max(0.02, worst) + 0.005, 3))


def nelder_mead(function: Callable[[list[float]], float], start: list[float], iterations: int) -> list[float]:
    size = len(start)
    simplex = [start[:]] + [[x + (0.5 if i == j else 0.0) for j, x in enumerate(start)] for i in range(size)]
    values = [function(point) for point in simplex]
    for _ in range(iterations):
        order = sorted(range(size + 1), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        centroid = [sum(point[j] for point in simplex[:-1]) / size for j in range(size)]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centroid, worst)]
        value = function(reflected)
        if value < values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centroid, worst)]
            expanded_value = function(expanded)
            simplex[-1], values[-1] = (expanded, expanded_value) if expanded_value < value else (reflected, value)
        elif value < values[-2]:
            simplex[-1], values[-1] = reflected, value
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centroid, worst)]
            contracted_value = function(contracted)
            if contracted_value < values[-1]:
                simplex[-1], values[-1] = contracted, contracted_value
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (x - b) for b, x in zip(best, point)] for point in simplex[1:]]
                values = [values[0]] + [function(point) for point in simplex[1:]]
    return simplex[min(range(size + 1), key=values.__getitem__)]


def _bounded(z: float, low: float, high: float) -> float:
    return low + (high - low) / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def _unbounded(x: float, low: float, high: float) -> float:
    fraction = min(max((x - low) / (high - low), 1e-6), 1 - 1e-6)
    return math.log(fraction / (1 - fraction))


def _decode(z: list[float], names: list[str], runs: list[str]) -> TimeCoefficients:
    values = {name: _bounded(value, *TIME_BOUNDS[name]) for name, value in zip(names, z)}
    factors = {runs[0]: 1.0}
    for run, value in zip(runs[1:], z[len(names):]):
        factors[run] = _bounded(value, *HOST_FACTOR_BOUNDS)
    return TimeCoefficients(**values, host_factors=factors)


def fit_time(points: Sequence[Measurement], start: TimeCoefficients | None = None) -> TimeCoefficients:
    runs = sorted({p.run for p in points})
    names = time_parameters(points[0].shape.engine)
    initial = start or TimeCoefficients(
        host_layer_pass_4bit=0.003, host_layer_pass_float=0.002, host_per_target=0.0003, host_loss_chunk=0.001,
        host_per_token=2e-7, host_micro_batch=0.005,
        host_lora_tensor=2e-5, gemm_efficiency=0.5, masked_attention_efficiency=0.25,
        causal_attention_efficiency=0.35, varlen_attention_efficiency=0.35, elementwise_traffic=3.0, overlap=4.0,
        offload_gbs=20.0,
    )
    z = [_unbounded(getattr(initial, name), *TIME_BOUNDS[name]) for name in names]
    z += [_unbounded(initial.host_factors.get(run, 1.0), *HOST_FACTOR_BOUNDS) for run in runs[1:]]

    work = [(time_features(p.shape, p.gpu), p.run, p.step_s) for p in points]

    def loss(vector: list[float]) -> float:
        coefficients = _decode(vector, names, runs)
        total = 0.0
        for features, run, measured in work:
            predicted = step_from_features(features, coefficients, coefficients.host_factors[run]).step
            total += math.log(predicted / measured) ** 4
        return total + 1e-4 * sum(v * v for v in vector)

    for _ in range(4):  # restarts shake the simplex out of flat regions
        z = nelder_mead(loss, z, 1500)
    return _decode(z, names, runs)


def memory_errors(points: Sequence[Measurement], coefficients: MemoryCoefficients,
                  time: TimeCoefficients) -> list[float]:
    return [estimate_memory(p.shape, coefficients, point_host_ahead(p, time)).reserved / p.job_reserved_gib - 1
            for p in points]


def time_errors(points: Sequence[Measurement], coefficients: TimeCoefficients, per_run: bool = True) -> list[float]:
    return [
        estimate_step_time(p.shape, p.gpu, coefficients, coefficients.host_factors.get(p.run) if per_run else None).step
        / p.step_s - 1
        for p in points
    ]


def _summary(errors: list[float]) -> dict[str, float]:
    rms = math.sqrt(sum(e * e for e in errors) / len(errors))
    return {"max_abs": round(max(abs(e) for e in errors), 4), "rms": round(rms, 4)}


def held_out_errors(points: Sequence[Measurement], time_start: TimeCoefficients) -> dict[str, dict[str, float]]:
    """Errors at each architecture's points when that architecture is left out of the fit."""
    memory, time = [], []
    for arch in sorted({p.shape.arch.name for p in points}):
        train = [p for p in points if p.shape.arch.name != arch]
        test = [p for p in points if p.shape.arch.name == arch]
        coefficients = fit_time(train, time_start)
        memory += memory_errors(test, fit_memory(train, coefficients), coefficients)
        known = {run: f for run, f in coefficients.host_factors.items()}
        test_known = [p for p in test if p.run in known]
        time += time_errors(test_known, coefficients)
    return {"memory_reserved": _summary(memory), "step_time": _summary(time)}


MIN_POINTS = 12  # an engine needs this many measured points before it gets its own coefficients


def fit_engine(points: Sequence[Measurement], path: Path, heldout: Sequence[Measurement] = ()) -> Calibration:
    """Coefficients from `points`; `heldout` points (never fitted) are only scored."""
    time = fit_time(points)
    time = replace(time, margin=round(math.exp(max(abs(math.log(1 + e)) for e in time_errors(points, time, False)))
                                      - 1 + 0.005, 3))
    memory = fit_memory(points, time)
    tokens = [p.shape.tokens_per_micro_batch for p in points]
    params = [p.shape.arch.total_params for p in points]
    accuracy = {
        "points": len(points),
        "memory_reserved": _summary(memory_errors(points, memory, time)),
        "step_time": _summary(time_errors(points, time)),
        "step_time_at_mean_host": _summary(time_errors(points, time, per_run=False)),
        "architecture_held_out": held_out_errors(points, time),
    }
    calibration = Calibration(
        engine=points[0].shape.engine, cards=tuple(sorted({p.gpu.name for p in points})), memory=memory, time=time,
        tokens_range=(min(tokens), max(tokens)), params_range=(min(params), max(params)),
        quantizations=tuple(sorted({p.shape.quantization for p in points})),
        measurements_sha256=sha256(path), accuracy=accuracy,
        architectures=tuple(sorted({p.shape.arch.name.split("[")[0] for p in points})),
        model_types=tuple(sorted({p.shape.arch.model_type for p in points})),
        micro_batch_range=(min(p.shape.micro_batch for p in points), max(p.shape.micro_batch for p in points)),
        modes=tuple(sorted({p.shape.checkpointing for p in points})),
    )
    if heldout:
        accuracy["heldout"] = heldout_scores(heldout, calibration)
    return calibration


def heldout_scores(points: Sequence[Measurement], calibration: Calibration) -> dict:
    """Errors at points the fit never saw, as a plan would state them (host speed: the calibrated mean)."""
    from cost_models.estimate import estimate

    memory, above_upper, time, outside = [], [], [], 0
    for p in points:
        e = estimate(p.shape, p.gpu, calibration)
        measured = p.job_reserved_gib + calibration.memory.cuda_context_gib
        memory.append(e.memory.reserved / p.job_reserved_gib - 1)
        above_upper.append(measured / e.need_upper_gib - 1)
        time.append(e.time.step / p.step_s - 1)
        outside += not e.step_low <= p.step_s <= e.step_high
    return {
        "points": len(points), "memory_reserved": _summary(memory), "step_time": _summary(time),
        "worst_measured_over_upper": round(max(above_upper), 4), "step_time_outside_interval": outside,
    }


def fit(path: Path = MEASUREMENTS) -> dict[str, Calibration]:
    """One calibration per engine with enough measured points; held-out rows are scored, never fitted."""
    points = [p for p in load_measurements(path) if p.status == "ok"]
    engines = sorted({p.shape.engine for p in points})
    fitted = {engine: [p for p in points if p.shape.engine == engine and p.split == "fit"] for engine in engines}
    heldout = {engine: [p for p in points if p.shape.engine == engine and p.split == "heldout"] for engine in engines}
    return {engine: fit_engine(group, path, heldout[engine])
            for engine, group in fitted.items() if len(group) >= MIN_POINTS}


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value


def write(calibrations: dict[str, Calibration], path: Path = FIT) -> None:
    payload = {"engines": {engine: _rounded(asdict(c)) for engine, c in calibrations.items()}}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    calibrations = fit()
    write(calibrations)
    print(json.dumps({engine: c.accuracy for engine, c in calibrations.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
