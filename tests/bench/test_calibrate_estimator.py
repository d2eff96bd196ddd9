"""bench/calibrate_estimator.py on CPU: the smoke dry run, the cuda_graphs column and how the graphs of a loaded fast
engine follow each point (capture itself needs CUDA: nothing is captured here)."""
import csv
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train_core.fast.graphs as graphs_module
from train_core.device import DevicePath
from train_core.fast.checkpoint_graphs import CheckpointedGraphs
from train_core.fast.engine import FastEngine
from train_core.fast.graphs import GraphedLayers
from train_core.fast.loading import AdapterSpec
from train_core.models.sources import resolve_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from calibrate_estimator import COLUMNS, MATRIX, Bench, G, P, main, upgrade_header  # noqa: E402


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_cpu_dry_run_records_a_graphs_point_as_the_eager_point_that_ran(tmp_path):
    out = tmp_path / "calibration.csv"
    assert main(["--device", "cpu", "--matrix", "smoke", "--out", str(out)]) == 0
    rows = _rows(out)
    asked = [point.cuda_graphs for group in MATRIX["smoke"] for point in group.points]
    assert len(rows) == len(asked) and any(asked)
    assert list(rows[0]) == COLUMNS and COLUMNS[-2:] == ["cuda_graphs", "equal_lengths"]
    assert {row["status"] for row in rows} == {"ok"} and {row["cuda_graphs"] for row in rows} == {"False"}
    assert [row["equal_lengths"] for row in rows] == [str(row["samples_per_row"] == "1") for row in rows]


def test_a_csv_of_an_older_bench_gets_the_new_header_and_a_foreign_one_is_refused(tmp_path):
    older = tmp_path / "older.csv"
    row = ",".join(["x"] * (len(COLUMNS) - 1))
    older.write_text(",".join(COLUMNS[:-1]) + "\n" + row + "\n", encoding="utf-8")
    upgrade_header(older)
    assert older.read_text(encoding="utf-8") == ",".join(COLUMNS) + "\n" + row + "\n"
    assert _rows(older)[0]["equal_lengths"] is None  # read as samples of one length by cost_models.calibration
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("run,card\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="not this bench's columns"):
        upgrade_header(foreign)


def test_graphs_are_built_for_each_point_shape_and_dropped_for_eager_points(monkeypatch):
    """As build_fast_engine would for a job of the point's checkpointing and max_seq_length = seq_len; the graphs
    of the point before are released first."""
    monkeypatch.setattr(graphs_module, "graphs_unsupported", lambda spec, device: None)  # as on a CUDA GPU
    released = []
    monkeypatch.setattr(GraphedLayers, "release", lambda self: released.append(self))
    adapters = AdapterSpec.from_target_modules(8, 16, "all-linear", seed=0)
    engine = FastEngine(resolve_model("builtin:tiny-llama").path, adapters, torch.device("cpu"), "full",
                        dtype=torch.float32)
    bench = Bench.__new__(Bench)
    bench.engine_name = "train_core-fast"
    bench.trainer = SimpleNamespace(engine=engine, path=DevicePath("cpu", "nf4", torch.float32, "adamw", "full", "test"))
    bench.set_checkpointing("none")
    bench.set_graphs(G("none", 256, 4, 2))
    first = engine.graphs
    assert type(first) is GraphedLayers and (first.max_tokens, first.max_length) == (1024, 256)
    assert bench.trainer.path.cuda_graphs
    bench.set_checkpointing("full")
    bench.set_graphs(G("full", 128, 2, 1))
    assert isinstance(engine.graphs, CheckpointedGraphs) and (engine.graphs.max_tokens, engine.graphs.max_length) == (
        256, 128)
    assert released == [first]
    second = engine.graphs
    bench.set_graphs(P("full", 128, 2, 1))
    assert engine.graphs is None and released == [first, second] and not bench.trainer.path.cuda_graphs
    assert not bench.graphs_replayed()
    monkeypatch.setattr(graphs_module, "graphs_unsupported", lambda spec, device: "no flash attention")
    bench.set_graphs(G("full", 128, 2, 1))
    assert engine.graphs is None and not bench.trainer.path.cuda_graphs


def test_synthetic_rows_hold_one_full_sample_or_unequal_ones():
    from bench.calibrate_estimator import Point, synthetic_samples

    assert {len(sample) for sample in synthetic_samples(Point("none", 2048, 2, 1), 100, 4, 0)} == {2048}
    lengths = [len(sample) for sample in synthetic_samples(Point("none", 2048, 2, 4), 100, 4, 0)]
    assert lengths == [448, 576] * 8 and sum(lengths) == 4 * 2048
