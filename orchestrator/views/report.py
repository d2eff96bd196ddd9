"""The end-of-run report: best trial, per-trial cost ledger with waste, resume latency, and a loss-curve PNG."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.node.preemption import PreemptionCause
from cluster.storage import parse_uri
from orchestrator.run.events import CapacityRefused, EventKind, Lost, Preempted, Stopped, Training
from orchestrator.run.ledger import compute_ledger
from orchestrator.export.model_export import export_command
from orchestrator.run.state import Event, StateStore

INTERRUPTED = (EventKind.PREEMPTED, EventKind.LOST, EventKind.ERROR)


@dataclass
class ResumeLatency:
    """How long one trial was out between an interruption and training again, split into its parts (seconds)."""

    trial_id: str
    attempt: int
    cause: str
    detect: float  # interruption -> the controller knows (the attempt's driver returned)
    relaunch: float  # -> the next node launched (re-plan and provision)
    boot: float  # -> the node is running
    workers: float  # -> Ray Train's driver, controller and worker processes are up
    restore: float  # -> model loaded and the checkpoint restored (the first step starts)
    first_step: float  # -> the first step is done
    total: float


@dataclass
class TrialLine:
    trial_id: str
    params: dict
    state: str
    attempts: int
    preemptions: int
    errors: int
    steps: int
    eval_loss: float | None
    usd: float
    wasted_usd: dict[str, float]
    adapter: str | None
    saved_usd: float = 0.0  # what early stopping kept this trial from spending


def _first(events: list[Event], kind: EventKind, attempt: int) -> Event | None:
    return next((e for e in events if e.kind == kind and e.attempt == attempt), None)


def resume_latencies(events: list[Event]) -> list[ResumeLatency]:
    by_trial: dict[str, list[Event]] = {}
    for event in events:
        if event.trial_id:
            by_trial.setdefault(event.trial_id, []).append(event)
    samples = []
    for trial_id, trial_events in by_trial.items():
        for ended in [e for e in trial_events if e.kind in INTERRUPTED and e.attempt]:
            nxt = ended.attempt + 1
            launch = _first(trial_events, EventKind.LAUNCH, nxt)
            running = _first(trial_events, EventKind.NODE_RUNNING, nxt)
            started = _first(trial_events, EventKind.WORKERS_STARTED, nxt)
            training = _first(trial_events, EventKind.TRAINING, nxt)
            if not (launch and running and started and training):
                continue
            lost = _first(trial_events, EventKind.NODE_LOST, ended.attempt)
            checkpoints = [e for e in trial_events if e.kind == EventKind.CHECKPOINT and e.attempt == ended.attempt]
            if lost is not None:
                interrupted = lost.time
            elif ended.kind == EventKind.PREEMPTED and checkpoints:
                interrupted = checkpoints[-1].time
            else:
                interrupted = ended.time
            detail = training.data
            step_seconds = float(detail.step_seconds or 0.0) if isinstance(detail, Training) else 0.0
            first_start = training.time - step_seconds
            cause = ended.data.cause if isinstance(ended.data, (Preempted, Lost)) else None
            samples.append(ResumeLatency(
                trial_id, nxt, str(cause or ended.kind),
                detect=ended.time - interrupted, relaunch=launch.time - ended.time, boot=running.time - launch.time,
                workers=started.time - running.time, restore=first_start - started.time, first_step=step_seconds,
                total=training.time - interrupted,
            ))
    return samples


def build_report(state: StateStore, run_id: str) -> dict:
    run = state.run(run_id)
    events = state.events(run_id)
    now = run.finished or time.time()
    ledger = compute_ledger(events, now)
    storage = parse_uri(run.storage)
    lines = []
    for trial in state.trials(run_id):
        cost = ledger.trials.get(trial.id)
        adapter = str(storage.child(run_id, trial.id, "adapter")) if trial.state == "succeeded" else None
        stopped = next((e.data for e in events if e.trial_id == trial.id and isinstance(e.data, Stopped)), None)
        lines.append(TrialLine(trial.id, trial.params, trial.state, trial.attempts, trial.preemptions, trial.errors,
                               trial.step, trial.eval_loss, cost.usd if cost else 0.0,
                               dict(cost.wasted_usd) if cost else {}, adapter,
                               float(stopped.saved_usd or 0.0) if stopped else 0.0))
    finished = [line for line in lines if line.state == "succeeded" and line.eval_loss is not None]
    best = min(finished, key=lambda line: line.eval_loss, default=None)
    latencies = resume_latencies(events)
    return {
        "run": run_id, "name": run.name, "created": run.created, "finished": run.finished,
        "wall_seconds": (run.finished or time.time()) - run.created,
        "usd": ledger.usd, "wasted_usd": ledger.wasted_usd, "saved_usd": sum(line.saved_usd for line in lines),
        "best": {**asdict(best), "export_command": export_command(best.adapter, run_id, run.spec.get("storage_endpoint"))} if best else None,
        "trials": [asdict(line) for line in lines],
        "nodes": [{**asdict(node), "usd": node.usd(now), "seconds": node.seconds(now)}
                  for cost in ledger.trials.values() for node in cost.nodes],
        "resume_latency": [asdict(sample) for sample in latencies],
        "capacity_refusals": [{"trial_id": e.trial_id, "attempt": e.attempt, "time": e.time, **e.data.to_json()}
                              for e in events if isinstance(e.data, CapacityRefused)],
    }


def render_text(report: dict) -> str:
    out = [f"run {report['run']}: {report['wall_seconds']:.0f} s wall, ${report['usd']:.6f} in total"]
    wasted = report["wasted_usd"]
    if wasted:
        out.append("wasted: " + ", ".join(f"${usd:.6f} by {cause}" for cause, usd in sorted(wasted.items())))
    stopped = [line for line in report["trials"] if line["state"] == "stopped"]
    if stopped:
        out.append(f"early stopping: {len(stopped)} trial(s) stopped, ${report['saved_usd']:.6f} saved "
                   "(their remaining steps at the $/step they were training at); their checkpoints are kept")
    best = report["best"]
    if best:
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items()) or "no search parameters"
        out.append(f"best trial: {best['trial_id']} ({params}), eval loss {best['eval_loss']:.4f}, "
                   f"adapter {best['adapter']}")
        out.append(f"export it: {best['export_command']}")
    header = ("TRIAL", "STATE", "ATTEMPTS", "PREEMPT", "ERRORS", "STEPS", "EVAL", "$ TOTAL", "$ WASTED", "$ SAVED")
    rows = [header]
    for line in report["trials"]:
        rows.append((line["trial_id"], line["state"], str(line["attempts"]), str(line["preemptions"]),
                     str(line["errors"]), str(line["steps"]),
                     "-" if line["eval_loss"] is None else f"{line['eval_loss']:.4f}",
                     f"{line['usd']:.6f}", f"{sum(line['wasted_usd'].values()):.6f}",
                     f"{line['saved_usd']:.6f}" if line["state"] == "stopped" else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out += ["", "cost ledger (from events; waste = work after the last checkpoint + restart overhead):"]
    out += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    out += _nodes_text(report["nodes"]) + _refusals_text(report["capacity_refusals"])
    latency = report["resume_latency"]
    if latency:
        out += ["", "resume latency (interruption -> training again), seconds:"]
        parts = ("detect", "relaunch", "boot", "workers", "restore", "first_step", "total")
        out.append("  ".join(["TRIAL      ", "ATTEMPT", "CAUSE                ", *[p.upper() for p in parts]]))
        for sample in latency:
            out.append("  ".join([sample["trial_id"].ljust(11), str(sample["attempt"]).ljust(7),
                                  sample["cause"].ljust(21), *[f"{sample[p]:.1f}".ljust(len(p)) for p in parts]]))
        mean = {p: sum(s[p] for s in latency) / len(latency) for p in parts}
        out.append("  ".join(["mean".ljust(11), "".ljust(7), "".ljust(21), *[f"{mean[p]:.1f}".ljust(len(p))
                                                                           for p in parts]]))
    return "\n".join(out)


def _nodes_text(nodes: list[dict]) -> list[str]:
    """One line per rented node: which instance, for which attempt, how long, what it cost and how it ended."""
    if not nodes:
        return []
    rows = [("TRIAL", "ATTEMPT", "NODE", "OFFER", "$/H", "SECONDS", "$", "OUTCOME")]
    rows += [(n["trial_id"], str(n["attempt"]), n["node"], n["offer"], f"{n['price_per_hour']:.4f}",
              f"{n['seconds']:.0f}", f"{n['usd']:.6f}", n["outcome"]) for n in nodes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["", "nodes:"] + ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _refusals_text(refusals: list[dict]) -> list[str]:
    """How often each offer was refused for capacity, and why (the next offer was tried each time)."""
    if not refusals:
        return []
    counts: dict[tuple[str, str], int] = {}
    for refusal in refusals:
        counts[(refusal["offer"], refusal["code"])] = counts.get((refusal["offer"], refusal["code"]), 0) + 1
    lines = ["", f"capacity refusals ({len(refusals)}; the next fitting offer was tried each time):"]
    return lines + [f"  {offer}: {code} x{count}" for (offer, code), count in sorted(counts.items())]


def _value_per_step(rows: list[tuple[int, int, float, float]]) -> dict[int, float]:
    """One value per step: the latest attempt's, else the one backfilled from the final checkpoint (attempt 0)."""
    by_step: dict[int, float] = {}
    for attempt, step, value, _ in sorted(rows, key=lambda row: (row[0] == 0, row[0])):
        if attempt == 0:
            by_step.setdefault(step, value)
        else:
            by_step[step] = value
    return by_step


def plot_losses(state: StateStore, run_id: str, path: Path) -> Path:
    """Training loss per step for every trial (eval loss dashed), preemptions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = state.events(run_id)
    figure, axes = plt.subplots(figsize=(9, 5))
    for trial in state.trials(run_id):
        by_step = _value_per_step(state.metrics(run_id, trial.id))
        if not by_step:
            continue
        steps = sorted(by_step)
        label = f"{trial.id} " + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in trial.params.items())
        (line,) = axes.plot(steps, [by_step[s] for s in steps], label=label.strip(), linewidth=1.5)
        evals = _value_per_step(state.metrics(run_id, trial.id, "eval_loss"))
        if evals:
            axes.plot(sorted(evals), [evals[s] for s in sorted(evals)], linestyle="--", marker="o",
                      color=line.get_color(), linewidth=1.2, label=f"{trial.id} eval loss")
        for event in events:
            if event.trial_id != trial.id or not isinstance(event.data, (Preempted, Lost)):
                continue
            reached = event.data.reached_step if isinstance(event.data, Preempted) else None
            step = reached or event.step or 0
            y = by_step.get(step, by_step[steps[0]])
            saved = event.data.cause == PreemptionCause.NOTICE_CHECKPOINT
            axes.scatter([step], [y], marker="v" if saved else "X", s=90, color=line.get_color(),
                         edgecolors="black", zorder=3)
            axes.axvline(event.step or 0, color=line.get_color(), linestyle=":", linewidth=1)
    axes.scatter([], [], marker="v", color="grey", edgecolors="black", label="preempted, checkpoint saved on notice")
    axes.scatter([], [], marker="X", color="grey", edgecolors="black", label="preempted, killed (dotted: resumed from)")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (solid: training, dashed: eval)")
    axes.set_title(f"{run_id}: loss per trial, preemptions marked")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
