"""Fuzzing every user input (sweep specs, train configs, data rows, storage URIs, CLI arguments): each case either
succeeds or exits 2 with exactly one line on stderr and no traceback; a case known to be bad must be that one line.

The CLI runs in-process (orchestrator.cli.main); `submit` runs with the controller launch replaced by a recorder, so a
bad case that slips through shows up as "accepted" instead of renting anything. A few cases at the end run the real
command in a subprocess to prove the exit status and stderr.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from tests.orchestrator.sweeps import TRAIN_DATA, spottune, tiny_sweep

BAD, OK = "bad", "ok"


@dataclass
class Case:
    name: str
    expect: str  # BAD: must be one clear line; OK: must succeed
    argv: Callable[[Path], list[str]]  # builds the files it needs under a temporary directory


@dataclass
class Outcome:
    status: int | None  # exit status, None when an exception escaped
    stderr: str
    stdout: str = ""

    @property
    def kind(self) -> str:
        if self.status is None or "Traceback" in self.stderr:
            return "traceback"
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if self.status == 2 and len(lines) == 1:
            return "clear"
        if self.status == 0:
            return "accepted"
        if self.status == 1 and not lines and "\nplaced " in self.stdout:
            return "unplaced"  # `plan`: a valid spec that no offer takes (over max_price_per_hour, too big)
        return "unclear"


def run_in_process(argv: list[str]) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 2
        except BaseException as error:  # noqa: BLE001 - any escape is what this test counts
            return Outcome(None, f"{err.getvalue()}Traceback: {type(error).__name__}: {error}")
    return Outcome(status, err.getvalue(), out.getvalue())


@pytest.fixture
def no_launch(monkeypatch):
    """submit records the launch it would make instead of starting a controller."""
    launched = []
    monkeypatch.setattr("orchestrator.run.daemon.spawn_controller", lambda layout: launched.append(layout) or 0)
    return launched


# --- sweep specs: one field changed ---------------------------------------------------------------------------

def spec_with(directory: Path, changes: dict, name: str = "fuzz") -> Path:
    path = tiny_sweep(directory, name)
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def submit_spec(changes: dict) -> Callable[[Path], list[str]]:
    return lambda d: ["submit", str(spec_with(d, changes)), "--detach", "--state-dir", str(d / "state")]


NOT_NUMBERS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "true": True, "text": "abc", "list": [1],
               "mapping": {"a": 1}, "null": None}
INTEGER_FIELDS = {
    "config/training/max_steps": 10**12, "config/training/batch_size": 10**9, "config/training/seed": 2**70,
    "config/training/epochs": 10**9, "config/lora/r": 10**7, "config/data/max_seq_length": 10**12,
    "config/training/warmup_steps": 10**15, "config/training/log_every": 10**15, "config/data/eval_samples": 10**12,
    "max_parallel": 10**30, "resources/gpus_per_trial": 1000, "max_error_retries": 10**9,
    "checkpoint/every_steps": 10**15, "search/seed": 2**70,
}
FLOAT_FIELDS = {
    "search/parameters/training.learning_rate": 1e30, "config/lora/alpha": 1e300, "config/training/weight_decay": 1e300,
    "config/training/max_grad_norm": 1e300, "resources/max_price_per_hour": 1e300,
}


def spec_cases() -> list[Case]:
    cases = []
    for field, huge in INTEGER_FIELDS.items():
        for label, value in {**NOT_NUMBERS, "float": 2.5, "whole float": 8.0, "huge": huge}.items():
            if label == "null" and field.endswith(("max_steps", "eval_samples")):
                continue
            cases.append(Case(f"spec {field}={label}", BAD, submit_spec({field: value})))
    for field, huge in FLOAT_FIELDS.items():
        for label, value in {**NOT_NUMBERS, "huge": huge}.items():
            if label == "null" and field.endswith(("max_grad_norm", "max_price_per_hour")):
                continue
            if field.startswith("search/parameters/"):  # a grid over one value
                value = [value]
            cases.append(Case(f"spec {field}={label}", BAD, submit_spec({field: value})))
    cases += [
        Case("spec market hazard inf", BAD, submit_spec({"provider_settings/local/market/hazard_per_hour": math.inf})),
        Case("spec market notice nan", BAD, submit_spec({"provider_settings/local/market/notice_s": math.nan})),
        Case("spec market boot_s inf", BAD, submit_spec({"provider_settings/local/market/boot_s": math.inf})),
        Case("spec packing=1", BAD, submit_spec({"config/data/packing": 1})),
        Case("spec packing='yes'", BAD, submit_spec({"config/data/packing": "yes"})),
        Case("spec adam_betas=[0.9, inf]", BAD, submit_spec({"config/training/adam_betas": [0.9, math.inf]})),
        Case("spec adam_betas=[0.9, 1.5]", BAD, submit_spec({"config/training/adam_betas": [0.9, 1.5]})),
        Case("spec log_uniform [0, 1e-3]", BAD, submit_spec({
            "search": {"method": "random", "samples": 2,
                       "parameters": {"training.learning_rate": {"log_uniform": [0, 1e-3]}}}})),
        Case("spec log_uniform [1e-3, 1e-5]", BAD, submit_spec({
            "search": {"method": "random", "samples": 2,
                       "parameters": {"training.learning_rate": {"log_uniform": [1e-3, 1e-5]}}}})),
        Case("spec uniform [nan, 1]", BAD, submit_spec({
            "search": {"method": "random", "samples": 2,
                       "parameters": {"training.learning_rate": {"uniform": [math.nan, 1]}}}})),
        Case("spec random samples 10**9", BAD, submit_spec({
            "search": {"method": "random", "samples": 10**9, "parameters": {"training.seed": [1, 2]}}})),
        Case("spec grid of 10**6 points", BAD, submit_spec({
            "search": {"parameters": {f"training.seed{i}": list(range(10)) for i in range(6)}}})),
        Case("spec grid over a non-section", BAD, submit_spec({
            "search": {"parameters": {"training.seed.x": [1, 2]}}})),
        Case("spec storage http URL", BAD, submit_spec({"storage": "http://example.com/x"})),
        Case("spec storage_endpoint 'not a url'", BAD, submit_spec({
            "storage": "s3://bucket/prefix", "storage_endpoint": "not a url"})),
        Case("spec storage_endpoint ftp", BAD, submit_spec({
            "storage": "s3://bucket/prefix", "storage_endpoint": "ftp://example.com"})),
        Case("spec storage_endpoint no host", BAD, submit_spec({
            "storage": "s3://bucket/prefix", "storage_endpoint": "http://"})),
        Case("spec storage s3 without bucket", BAD, submit_spec({"storage": "s3://"})),
        Case("spec storage empty", BAD, submit_spec({"storage": ""})),
        Case("spec storage gs", BAD, submit_spec({"storage": "gs://bucket/x"})),
        Case("spec storage number", BAD, submit_spec({"storage": 5})),
        Case("spec provider kubernetes", BAD, submit_spec({"resources/providers": ["kubernetes"]})),
        Case("spec provider unknown", BAD, submit_spec({"resources/providers": ["nimbus"]})),
        Case("spec bad jinja template", BAD, submit_spec({"config/data/chat_template": "{% for m in messages %}"})),
        Case("spec unknown template name", BAD, submit_spec({"config/data/chat_template": "llama9"})),
        Case("spec name with slash", BAD, submit_spec({"name": "a/b"})),
        Case("spec data.train missing", BAD, submit_spec({"config/data/train": "/nonexistent/train.jsonl"})),
        Case("spec model.name number", BAD, submit_spec({"config/model/name": 7})),
        Case("spec ok: learning_rate as '1e-4' text", OK, submit_spec({"config/training/learning_rate": "1e-4"})),
        Case("spec ok: log_uniform search", OK, submit_spec({
            "search": {"method": "random", "samples": 2,
                       "parameters": {"training.learning_rate": {"log_uniform": [1e-5, 1e-3]}}}})),
        Case("spec ok: as given", OK, submit_spec({})),
        Case("spec ok: seed 2**32-1", OK, submit_spec({"config/training/seed": 2**32 - 1})),
        Case("spec ok: max_parallel 8", OK, submit_spec({"max_parallel": 8})),
    ]
    return cases


# --- raw YAML text -----------------------------------------------------------------------------------------------

def raw_spec(text: str | bytes, command: str = "submit") -> Callable[[Path], list[str]]:
    def build(directory: Path) -> list[str]:
        path = directory / "raw.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        extra = ["--detach", "--state-dir", str(directory / "state")] if command == "submit" else []
        return [command, str(path), *extra]
    return build


def raw_config(text: str | bytes) -> Callable[[Path], list[str]]:
    def build(directory: Path) -> list[str]:
        path = directory / "train.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return ["train", str(path), "--output-dir", str(directory / "out")]
    return build


def valid_spec_text(directory: Path) -> str:
    return tiny_sweep(directory, "base").read_text(encoding="utf-8")




def alias_bomb(level: int) -> str:
    """A YAML list whose anchors nest: 9**(level + 1) scalars once expanded, in a few hundred bytes."""
    if level == 0:
        return "&a0 [x, x, x, x, x, x, x, x, x]"
    return f"&a{level} [{alias_bomb(level - 1)}, {', '.join([f'*a{level - 1}'] * 8)}]"


ALIAS_BOMB = f"name: bomb\nsearch:\n  parameters:\n    training.seed: [{alias_bomb(8)}]\n"
TRAIN_CONFIG = {
    "model": {"name": "builtin:tiny-llama", "quantization": "fp32"},
    "data": {"train": str(TRAIN_DATA), "max_seq_length": 64},
    "training": {"max_steps": 1, "batch_size": 2},
}


def config_text(**sections) -> str:
    config = json.loads(json.dumps(TRAIN_CONFIG))
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return yaml.safe_dump(config)


def yaml_cases() -> list[Case]:
    return [
        Case("yaml non-UTF-8 spec", BAD, raw_spec(b"name: caf\xe9\n")),
        Case("yaml non-UTF-8 config", BAD, raw_config(b"model:\n  name: caf\xe9\n")),
        Case("yaml alias bomb spec", BAD, raw_spec(ALIAS_BOMB, "plan")),
        Case("yaml alias bomb config", BAD, raw_config(ALIAS_BOMB)),
        Case("yaml duplicate key spec", BAD, raw_spec("name: a\nname: b\n", "plan")),
        Case("yaml duplicate key config", BAD, raw_config(config_text() + "training:\n  max_steps: 1\n")),
        Case("yaml deep nesting spec", BAD, raw_spec("name: a\nconfig: " + "[" * 5000 + "]" * 5000 + "\n", "plan")),
        Case("yaml deep nesting config", BAD, raw_config("model: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n")),
        Case("yaml 2 MB spec", BAD, raw_spec("name: a\n" + "# padding\n" * 220_000, "plan")),
        Case("yaml empty spec", BAD, raw_spec("", "plan")),
        Case("yaml list spec", BAD, raw_spec("- a\n- b\n", "plan")),
        Case("yaml tab indentation", BAD, raw_spec("name: a\nsearch:\n\tmethod: grid\n", "plan")),
        Case("yaml unclosed quote", BAD, raw_spec("name: 'a\n", "plan")),
        Case("yaml binary garbage", BAD, raw_spec(bytes(range(256)), "plan")),
        Case("yaml NUL byte", BAD, raw_spec("name: a\x00b\n", "plan")),
        Case("yaml python tag", BAD, raw_spec("name: !!python/object:os.system x\n", "plan")),
        Case("yaml spec is a directory", BAD, lambda d: ["plan", str(d)]),
        Case("config learning_rate .inf", BAD, raw_config(config_text(training={"learning_rate": math.inf}))),
        Case("config batch_size true", BAD, raw_config(config_text(training={"batch_size": True}))),
        Case("config max_steps 1e12", BAD, raw_config(config_text(training={"max_steps": 10**12}))),
        Case("config seed 2**70", BAD, raw_config(config_text(training={"seed": 2**70}))),
        Case("config bad jinja", BAD, raw_config(config_text(data={"chat_template": "{{ messages[0] "}))),
        Case("config eval_samples huge", BAD, raw_config(config_text(data={"eval_samples": 10**30}))),
        Case("config dropout nan", BAD, raw_config(config_text(lora={"dropout": math.nan}))),
        Case("config warmup_ratio inf", BAD, raw_config(config_text(training={"warmup_ratio": math.inf}))),
    ]


# --- data rows ---------------------------------------------------------------------------------------------------

GOOD_ROW = {"instruction": "Say hi", "output": "Hi"}
BAD_ROWS = {
    "alpaca output 123": {"instruction": "a", "output": 123},
    "alpaca output null": {"instruction": "a", "output": None},
    "alpaca output empty": {"instruction": "a", "output": ""},
    "alpaca instruction list": {"instruction": ["a"], "output": "b"},
    "alpaca input number": {"instruction": "a", "input": 5, "output": "b"},
    "messages role tool": {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"},
                                        {"role": "assistant", "content": "c"}]},
    "messages content number": {"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": "b"}]},
    "messages no assistant": {"messages": [{"role": "user", "content": "a"}]},
    "messages not a list": {"messages": "hello"},
    "messages empty": {"messages": []},
    "messages item not object": {"messages": ["a"]},
    "sharegpt unknown from": {"conversations": [{"from": "robot", "value": "a"}, {"from": "gpt", "value": "b"}]},
    "sharegpt value number": {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}]},
    "sharegpt missing value": {"conversations": [{"from": "human"}, {"from": "gpt", "value": "b"}]},
    "sharegpt from list": {"conversations": [{"from": ["human"], "value": "a"}, {"from": "gpt", "value": "b"}]},
    "unknown keys": {"question": "a", "answer": "b"},
}
BAD_LINES = {
    "not JSON": b"{not json}\n",
    "a JSON list": b"[1, 2]\n",
    "a JSON string": b"\"text\"\n",
    "non-UTF-8": b'{"instruction": "caf\xe9", "output": "b"}\n',
    "deeply nested": b'{"instruction": "a", "output": "b", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    "NaN token": b'{"instruction": "a", "output": NaN}\n',
}


def data_spec(lines: list[bytes], split: str = "train") -> Callable[[Path], list[str]]:
    def build(directory: Path) -> list[str]:
        data = directory / f"{split}.jsonl"
        data.write_bytes(b"".join(lines))
        spec = spec_with(directory, {f"config/data/{split}": str(data), **({} if split == "eval" else {
            "config/data/eval": None})})
        return ["submit", str(spec), "--detach", "--state-dir", str(directory / "state")]
    return build


def row(value: object) -> bytes:
    return (json.dumps(value) + "\n").encode("utf-8")


def data_cases() -> list[Case]:
    good = row(GOOD_ROW) * 3
    cases = []
    for name, value in BAD_ROWS.items():
        cases.append(Case(f"data row {name} (first row)", BAD, data_spec([row(value), good])))
        cases.append(Case(f"data row {name} (third row)", BAD, data_spec([good, row(value)])))
    for name, line in BAD_LINES.items():
        cases.append(Case(f"data line {name}", BAD, data_spec([good, line])))
        cases.append(Case(f"data eval line {name}", BAD, data_spec([good, line], split="eval")))
    cases += [
        Case("data empty file", BAD, data_spec([])),
        Case("data blank lines only", BAD, data_spec([b"\n\n\n"])),
        Case("data ok: three rows", OK, data_spec([good])),
        Case("data ok: messages rows", OK, data_spec([row({"messages": [
            {"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"}]})])),
    ]
    return cases


# --- CLI arguments -----------------------------------------------------------------------------------------------

def empty_state(directory: Path) -> Path:
    from orchestrator.run.state import StateStore

    StateStore(directory / "state")
    return directory / "state"


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def cli_cases() -> list[Case]:
    def plan(*flags: str) -> Callable[[Path], list[str]]:
        return lambda d: ["plan", str(tiny_sweep(d, "cli")), *flags]

    def on_empty_state(*args: str) -> Callable[[Path], list[str]]:
        return lambda d: [*args, "--state-dir", str(empty_state(d))]

    return [
        Case("cli report on an empty DB", BAD, on_empty_state("report")),
        Case("cli report unknown run", BAD, on_empty_state("report", "nope")),
        Case("cli status unknown run", BAD, on_empty_state("status", "nope")),
        Case("cli logs unknown trial", BAD, on_empty_state("logs", "nope/t000-abcdef")),
        Case("cli cancel unknown run", BAD, on_empty_state("cancel", "nope")),
        Case("cli resume unknown run", BAD, on_empty_state("resume", "nope")),
        Case("cli status without a DB", BAD, lambda d: ["status", "--state-dir", str(d / "none")]),
        Case("cli plan without a spec", BAD, lambda d: ["plan"]),
        Case("cli unknown command", BAD, lambda d: ["plant"]),
        Case("cli plan --max-price text", BAD, plan("--max-price", "cheap")),
        Case("cli plan --max-price nan", BAD, plan("--max-price", "nan")),
        Case("cli plan --max-price -1", BAD, plan("--max-price", "-1")),
        Case("cli plan --gpu unknown", BAD, plan("--gpu", "B300")),
        Case("cli plan --provider kubernetes", BAD, plan("--provider", "kubernetes")),
        Case("cli plan --provider unknown", BAD, plan("--provider", "nimbus")),
        Case("cli plan --json --csv", BAD, plan("--json", "--csv")),
        Case("cli plan missing spec file", BAD, lambda d: ["plan", str(d / "absent.yaml")]),
        Case("cli train missing config", BAD, lambda d: ["train", str(d / "absent.yaml")]),
        Case("cli costs --gpu unknown", BAD, lambda d: ["costs", "--gpu", "B300"]),
        Case("cli costs config with missing data", BAD, lambda d: [
            "costs", str(raw_config(config_text(data={"train": str(d / "absent.jsonl")}))(d)[1])]),
        Case("cli costs config with non-UTF-8 data", BAD, lambda d: [
            "costs", str(raw_config(config_text(data={"train": str(write(d / "l.jsonl", b"\xff\n"))}))(d)[1])]),
        Case("cli submit --interval nan", BAD, lambda d: [
            "submit", str(tiny_sweep(d, "cli")), "--interval", "nan", "--state-dir", str(d / "state")]),
        Case("cli submit --interval -1", BAD, lambda d: [
            "submit", str(tiny_sweep(d, "cli")), "--interval", "-1", "--state-dir", str(d / "state")]),
        Case("cli generate --max-new-tokens -5", BAD,
             lambda d: ["generate", "--max-new-tokens", "-5", "--prompt", "hi"]),
        Case("cli generate --temperature inf", BAD, lambda d: ["generate", "--temperature", "inf", "--prompt", "hi"]),
        Case("cli ok: plan --json", OK, plan("--json")),
        Case("cli ok: status on an empty DB", OK, on_empty_state("status")),
    ]


CASES = spec_cases() + yaml_cases() + data_cases() + cli_cases()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_input_succeeds_or_fails_in_one_clear_line(case, tmp_path, no_launch):
    outcome = run_in_process(case.argv(tmp_path))
    expected = "clear" if case.expect == BAD else "accepted"
    assert outcome.kind == expected, f"{case.name}: {outcome.kind} (status {outcome.status}): {outcome.stderr[-800:]}"
    if case.expect == BAD:
        assert not no_launch, f"{case.name}: a controller was launched for bad input"
        assert not (tmp_path / "state" / "spottune.db").exists() or case.name.startswith("cli "), case.name


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 150


NUMBERS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=8), st.none(),
)
FIELDS = sorted(INTEGER_FIELDS) + sorted(FLOAT_FIELDS) + ["config/training/warmup_ratio", "config/lora/dropout"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=NUMBERS)
def test_any_number_in_any_field_plans_or_fails_in_one_line(field, value, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hyp")
    outcome = run_in_process(["plan", str(spec_with(directory, {field: value}))])
    assert outcome.kind in ("clear", "accepted", "unplaced"), (
        f"{field}={value!r}: {outcome.kind}: {outcome.stderr[-800:]}")


# --- the real command in a subprocess ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["yaml non-UTF-8 spec", "yaml duplicate key spec", "spec max_parallel=huge",
                                  "cli report on an empty DB"])
def test_real_command_exits_2_with_one_line(case, tmp_path):
    argv = next(c for c in CASES if c.name == case).argv(tmp_path)
    if argv[0] == "submit":
        argv = ["plan", argv[1]]
    result = spottune(*argv, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"spottune {argv[0]}: error: "), result.stderr[-2000:]


if __name__ == "__main__":  # python -m tests.orchestrator.test_input_fuzz: the counts, launching nothing
    import tempfile

    import orchestrator.run.daemon

    orchestrator.run.daemon.spawn_controller = lambda layout: 0
    counts: Counter = Counter()
    for case in CASES:
        with tempfile.TemporaryDirectory() as directory:
            counts[(case.expect, run_in_process(case.argv(Path(directory))).kind)] += 1
    print(", ".join(f"{expect} inputs {kind}: {count}" for (expect, kind), count in sorted(counts.items())))
