"""What the policy is worth: one sweep priced three ways on a seeded spot market replayed on the `local` provider.

    python bench/policy.py --seeds 0 1 2 --markets all:1 aws+gcp:1 aws+gcp:5 --out /tmp/policy.json

A market is PROVIDERS:HAZARD: the local market at the cheapest catalog price of those providers per GPU type
and market (`all`: every provider, marketplaces included), preempting spot nodes at HAZARD times each
offer's catalog interruption bucket rate.

Real code paths: the sweep spec and planner (orchestrator.run.submission.prepare/register: sizing, Young/Daly,
choose_offer), the Controller's state machine on SQLite (launch, notice, lost, preempted, re-plan, relaunch),
the local provider's market (cluster.providers.local + local_market: catalog prices, each offer's interruption
bucket rate times the market's hazard scale as a seeded hazard, a 120 s notice, a hard kill at the deadline, no spot
capacity of a reclaimed GPU type for a cooldown), committed `latest` checkpoints in the trial's storage, and
the event-log ledger (orchestrator.run.ledger) for dollars and lost GPU-hours.

Simulated: the trainer. SimulatedRunner stands in for Ray Train; each attempt loads the model for the time
the planner assumes (weights at 500 MB/s), then advances one step per the estimator's step time on its node's
GPU (cost_models, as `spottune plan` prices it), writes a checkpoint every `checkpoint.every_steps` steps for
the planner's checkpoint cost, and, where the policy uses the notice, saves and stops at the first step
boundary after a notice, as train_core's Trainer does. The market's clocks and the trainer's run at
--time-scale simulated seconds per wall second; dollars and hours are reported in simulated time.

Policies:
  spottune       checkpoint.every_steps auto (Young/Daly for the offer's bucket), an emergency checkpoint on a
                 notice, every relaunch re-planned across every GPU type of the market, waiting for a reclaimed
                 type's capacity when that is cheaper (resources.delay_usd_per_hour at its default)
  skypilot-like  a checkpoint every 30 simulated minutes, the notice ignored, relaunch on the GPU type it
                 started on (waiting while that type has no spot capacity)
  on-demand      the cheapest on-demand offer that fits; no preemptions
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.node.agent import NODE_DIR_ENV, NOTICE_FILE, RECLAIMED_FILE  # noqa: E402
from cluster.providers.local import LocalProvider, LocalSettings  # noqa: E402
from cluster.provider import LaunchSpec, Node, NodeEvent, Requirements  # noqa: E402
from cluster.storage import open_store  # noqa: E402
from cost_models.autosize import autosize  # noqa: E402
from cost_models.catalog import Offer  # noqa: E402
from cost_models.memory import static_bytes  # noqa: E402
from cost_models.preemption import BOOT_SECONDS, checkpoint_seconds, restart_seconds  # noqa: E402
from orchestrator.run.controller import Controller  # noqa: E402
from orchestrator.run.layout import RunLayout  # noqa: E402
from orchestrator.run.ledger import compute_ledger  # noqa: E402
from orchestrator.sweep.planner import trial_job  # noqa: E402
from orchestrator.run.submission import prepare, register  # noqa: E402
from train_core.checkpoint import LATEST_KEY  # noqa: E402
from runspec.config import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SKYPILOT_CHECKPOINT_S = 1800.0
NOTICE_S = 120.0


def sweep_spec(directory: Path, steps: int, seed: int, prices_from: list[str] | None, hazard_scale: float,
               time_scale: float, cooldown_s: float) -> dict:
    """Four QLoRA trials of Qwen2.5-7B on the copywriting data, each several GPU-hours on a cheap card."""
    return {
        "name": "policy",
        "config": {
            "model": {"name": "Qwen/Qwen2.5-7B-Instruct"},
            "data": {"train": str(REPO / "examples" / "data" / "copywriting_train.jsonl"), "max_seq_length": 2048},
            "lora": {"target_modules": "all-linear"},
            "training": {"batch_size": 16, "epochs": 10000, "max_steps": steps, "learning_rate": 2.0e-4},
        },
        "search": {"method": "grid", "parameters": {"lora.r": [16, 64], "training.learning_rate": [1.0e-4, 2.0e-4]}},
        "resources": {"providers": ["local"], "market": "spot"},
        "storage": f"file://{directory / 'store'}",
        "checkpoint": {"every_steps": "auto"},
        "max_parallel": 4,
        "provider_settings": {"local": {"market": {
            "seed": seed, "prices_from": prices_from, "catalog_hazard_scale": hazard_scale, "time_scale": time_scale,
            "notice_s": NOTICE_S, "boot_s": BOOT_SECONDS, "capacity_cooldown_s": cooldown_s}}},
    }


class RecordingProvider:
    """The real local provider, remembering which node each node directory belongs to (for the runner)."""

    def __init__(self, provider: LocalProvider) -> None:
        self.provider = provider
        self.name = provider.name
        self.nodes: dict[str, Node] = {}

    def offers(self, requirements: Requirements) -> list[Offer]:
        return self.provider.offers(requirements)

    def launch(self, offer: Offer, spec: LaunchSpec) -> Node:
        node = self.provider.launch(offer, spec)
        self.nodes[node.env[NODE_DIR_ENV]] = node
        return node

    def terminate(self, node: Node) -> None:
        self.provider.terminate(node)

    def watch(self, node: Node) -> list[NodeEvent]:
        return self.provider.watch(node)

    def list_nodes(self, run_id: str) -> list[Node]:
        return self.provider.list_nodes(run_id)


@dataclass
class SimulatedAttempt:
    """One attempt's trainer on a simulated step clock (seconds below are simulated unless named real)."""

    trial_id: str
    attempt: int
    node_dir: Path
    store: object
    started_real: float
    scale: float
    step_s: float
    load_s: float
    save_s: float
    every: int
    total: int
    step: int
    use_notice: bool
    cursor: float = 0.0
    phase: str = "loading"  # loading | training | saving | done | dead
    saving_to_stop: bool = False
    outcome: dict | None = None
    sent_first: bool = False

    def _real(self, simulated: float) -> float:
        return self.started_real + simulated / self.scale

    def _sim(self, real: float) -> float:
        return (real - self.started_real) * self.scale

    def _death_and_notice(self) -> tuple[float, float | None]:
        """When the node dies (its notice deadline, or when it was reclaimed) and when the notice came."""
        try:
            deadline = float(json.loads((self.node_dir / NOTICE_FILE).read_text(encoding="utf-8"))["deadline"])
            return self._sim(deadline), self._sim(deadline) - NOTICE_S
        except FileNotFoundError:
            reclaimed = self.node_dir / RECLAIMED_FILE
            return (self._sim(reclaimed.stat().st_mtime), None) if reclaimed.exists() else (math.inf, None)

    def advance(self, now_real: float) -> list[dict]:
        """Everything this trainer did up to now (or its death), as the records a worker would have sent."""
        records: list[dict] = []
        death, notice = self._death_and_notice()
        limit = min(self._sim(now_real), death)
        tag = {"trial": self.trial_id, "attempt": self.attempt}
        last_metrics = None
        while self.phase in ("loading", "training", "saving"):
            if self.phase == "loading":
                if self.load_s > limit:
                    break
                self.cursor = self.load_s
                self.phase = "training"
                records.append({**tag, "kind": "started", "time": self._real(self.cursor), "world_size": 1})
            elif self.phase == "training":
                if self.cursor + self.step_s > limit:
                    break
                self.cursor += self.step_s
                self.step += 1
                last_metrics = {**tag, "kind": "metrics", "time": self._real(self.cursor), "step": self.step,
                                "total_steps": self.total, "loss": 1.0, "lr": 0.0,
                                "step_seconds": self.step_s / self.scale}
                if not self.sent_first:
                    self.sent_first = True
                    records.append(last_metrics)
                stop = (self.use_notice and notice is not None and notice <= self.cursor
                        and death - self.cursor >= self.save_s)
                if stop or self.step % self.every == 0 or self.step >= self.total:
                    self.phase, self.saving_to_stop = "saving", stop
            else:
                if self.cursor + self.save_s > limit:
                    break
                self.cursor += self.save_s
                self.store.write_text(LATEST_KEY, str(self.step))
                if last_metrics is not None:
                    records.append(last_metrics)
                    last_metrics = None
                records.append({**tag, "kind": "checkpoint", "time": self._real(self.cursor), "step": self.step,
                                "save_seconds": self.save_s / self.scale})
                if self.step >= self.total or self.saving_to_stop:
                    status = "completed" if self.step >= self.total else "stopped"
                    records.append({**tag, "kind": "finished", "time": self._real(self.cursor), "status": status,
                                    "step": self.step, "total_steps": self.total, "train_loss": 1.0,
                                    "eval_loss": None, "resumed_from": None})
                    self.phase, self.outcome = "done", {"ok": True}
                else:
                    self.phase = "training"
        if last_metrics is not None:
            records.append(last_metrics)
        if self.phase not in ("done", "dead") and death <= self._sim(now_real):
            self.phase = "dead"  # the provider's `lost` event tells the controller
        return records


@dataclass
class SimulatedRunner:
    """The runner interface the Controller drives (start, drain, finished), with simulated trainers."""

    provider: RecordingProvider
    scale: float
    use_notice: bool
    attempts: list[SimulatedAttempt] = field(default_factory=list)
    step_seconds: dict = field(default_factory=dict)  # (trial, gpu) -> simulated seconds per step

    def start(self, payload: dict) -> SimulatedAttempt:
        node = self.provider.nodes[payload["node_env"][NODE_DIR_ENV]]
        config = TrainConfig.model_validate(payload["config"])
        job = trial_job(payload["trial_id"], config)
        key = (payload["trial_id"], node.offer.gpu.name)
        if key not in self.step_seconds:
            sized = autosize(job.shape, node.offer.gpu, job.rows_per_worker, job.micro_batch, job.checkpointing)
            self.step_seconds[key] = sized.time.step
        state = static_bytes(job.shape)
        store = open_store(payload["storage"])
        committed = store.read_text(LATEST_KEY)
        attempt = SimulatedAttempt(
            trial_id=payload["trial_id"], attempt=payload["attempt"], node_dir=Path(payload["node_env"][NODE_DIR_ENV]),
            store=store, started_real=time.time(), scale=self.scale, step_s=self.step_seconds[key],
            load_s=restart_seconds(job.shape.arch.total_params * 2) - BOOT_SECONDS,
            save_s=checkpoint_seconds(state["lora_params_grads"] / 2 + state["optimizer_state"], payload["storage"]),
            every=int(config.checkpoint.every_steps), total=job.steps,
            step=int(committed) if committed else 0, use_notice=self.use_notice,
        )
        self.attempts.append(attempt)
        return attempt

    def drain(self) -> list[dict]:
        now = time.time()
        records = []
        for attempt in self.attempts:
            records += attempt.advance(now)
        self.attempts = [a for a in self.attempts if a.phase not in ("done", "dead")]
        return records

    def finished(self, handle: SimulatedAttempt) -> dict | None:
        return handle.outcome


def run_policy(name: str, market_label: str, spec: dict, directory: Path, poll_s: float) -> dict:
    """Submit the sweep to a real Controller on the local market and price what happened from its event log."""
    directory.mkdir(parents=True)
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    prepared = prepare(path)
    state, run_id = register(prepared, directory / "state")
    layout = RunLayout(directory / "state", run_id)
    market = LocalSettings.model_validate(spec["provider_settings"]["local"]).market
    provider = RecordingProvider(LocalProvider(layout.root, market, cpus=1))
    runner = SimulatedRunner(provider, market.time_scale, use_notice=name == "spottune")
    started = time.time()
    Controller(state, layout, provider, runner, poll_s=poll_s).run()
    events = state.events(run_id)
    scale = market.time_scale
    ledger = compute_ledger(events, time.time())
    lines = [line for cost in ledger.trials.values() for line in cost.nodes]
    trials = state.trials(run_id)
    gpus = sorted({e.detail.get("gpu") for e in events if e.kind == "launch"})
    return {
        "policy": name, "market": market_label, "seed": market.seed,
        "usd": ledger.usd * scale,
        "gpu_hours": sum(cost.node_seconds for cost in ledger.trials.values()) * scale / 3600,
        "sweep_hours": (max(e.time for e in events) - min(e.time for e in events if e.kind == "launch")) * scale / 3600,
        "lost_gpu_hours": sum(line.lost_seconds + line.restart_seconds for line in lines) * scale / 3600,
        "preemptions": sum(trial.preemptions for trial in trials),
        "saved_on_notice": sum(e.kind == "preempted" and e.detail.get("cause") == "notice_checkpoint" for e in events),
        "finished": sum(trial.state == "succeeded" for trial in trials), "trials": len(trials),
        "gpu_types": gpus, "wall_s": time.time() - started,
    }


def parse_market(text: str) -> tuple[list[str] | None, float]:
    providers, _, hazard = text.partition(":")
    return (None if providers == "all" else providers.split("+")), float(hazard or 1)


def policy_specs(directory: Path, args: argparse.Namespace, seed: int, market: str) -> dict[str, dict]:
    """The three policies' specs for one market: SkyPilot-like starts where spottune's plan starts."""
    prices_from, hazard = parse_market(market)
    base = sweep_spec(directory, args.steps, seed, prices_from, hazard, args.time_scale, args.cooldown_s)
    probe = directory / f"probe-{seed}-{market.replace(':', '-')}"
    probe.mkdir(parents=True)
    (probe / "sweep.yaml").write_text(yaml.safe_dump(base), encoding="utf-8")
    first = prepare(probe / "sweep.yaml").plan.trials[0].chosen
    every = math.ceil(SKYPILOT_CHECKPOINT_S / first.estimate.time.step)
    skypilot = {**base, "checkpoint": {"every_steps": every},
                "resources": {**base["resources"], "gpus": [first.offer.gpu.name]}}
    on_demand = {**base, "resources": {**base["resources"], "market": "on-demand"}}
    return {"spottune": base, "skypilot-like": skypilot, "on-demand": on_demand}


def summarize(results: list[dict]) -> list[dict]:
    rows = []
    for market in dict.fromkeys(r["market"] for r in results if r["policy"] != "on-demand"):
        prices = market.partition(":")[0]
        by_policy = {
            "spottune": [r for r in results if r["policy"] == "spottune" and r["market"] == market],
            "skypilot-like": [r for r in results if r["policy"] == "skypilot-like" and r["market"] == market],
            "on-demand": [r for r in results if r["policy"] == "on-demand" and r["market"].partition(":")[0] == prices],
        }
        on_demand = statistics.mean(r["usd"] for r in by_policy["on-demand"])
        skypilot = statistics.mean(r["usd"] for r in by_policy["skypilot-like"])
        for policy, runs in by_policy.items():
            usd = statistics.mean(r["usd"] for r in runs)
            rows.append({
                "market": market, "policy": policy, "seeds": len(runs),
                "usd": usd, "usd_min": min(r["usd"] for r in runs), "usd_max": max(r["usd"] for r in runs),
                "vs_skypilot": usd / skypilot, "vs_on_demand": usd / on_demand,
                "sweep_hours": statistics.mean(r["sweep_hours"] for r in runs),
                "gpu_hours": statistics.mean(r["gpu_hours"] for r in runs),
                "lost_gpu_hours": statistics.mean(r["lost_gpu_hours"] for r in runs),
                "preemptions": statistics.mean(r["preemptions"] for r in runs),
                "saved_on_notice": statistics.mean(r["saved_on_notice"] for r in runs),
                "finished": f"{sum(r['finished'] for r in runs)}/{sum(r['trials'] for r in runs)}",
                "gpu_types": sorted({g for r in runs for g in r["gpu_types"]}),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--markets", nargs="+", default=["all:1", "aws+gcp:1", "aws+gcp:5"],
                        help="PROVIDERS:HAZARD, PROVIDERS = all or names joined by +, HAZARD = multiple of the "
                             "catalog's interruption bucket rates")
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps per trial")
    parser.add_argument("--time-scale", type=float, default=2400.0, help="simulated seconds per wall second")
    parser.add_argument("--poll-s", type=float, default=0.05, help="controller poll interval, wall seconds")
    parser.add_argument("--cooldown-s", type=float, default=1800.0,
                        help="simulated seconds a reclaimed GPU type has no spot capacity")
    parser.add_argument("--out", help="JSON file for every run and the summary")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve() if args.out else None
    os.environ.setdefault("SPOTTUNE_CACHE", tempfile.mkdtemp(prefix="spottune-policy-cache-"))
    results = []
    with tempfile.TemporaryDirectory(prefix="spottune-policy-") as temporary:
        root = Path(temporary)
        os.chdir(root)
        for market in args.markets:
            prices = market.partition(":")[0]
            for seed in args.seeds:
                specs = policy_specs(root, args, seed, market)
                for name, spec in specs.items():
                    if name == "on-demand" and any(r["policy"] == "on-demand" and r["market"].partition(":")[0]
                                                   == prices for r in results):
                        continue  # no preemptions on demand: one run stands for every seed and hazard
                    label = market.replace(":", "-").replace("+", "_")
                    result = run_policy(name, market, spec, root / f"{name}-{seed}-{label}", args.poll_s)
                    results.append(result)
                    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}),
                          flush=True)
    rows = summarize(results)
    print(f"\n{'market (prices:hazard)':22} {'policy':14} {'$ mean (min-max)':>22} {'vs sky':>7} {'vs OD':>6} "
          f"{'sweep h':>8} {'GPU-h':>7} {'lost GPU-h':>10} {'preempt':>7} {'saved':>5} finished")
    for r in rows:
        print(f"{r['market']:22} {r['policy']:14} {r['usd']:8.2f} ({r['usd_min']:.2f}-{r['usd_max']:.2f})"
              f"{r['vs_skypilot']:7.2f} {r['vs_on_demand']:6.2f} {r['sweep_hours']:8.2f} {r['gpu_hours']:7.2f} "
              f"{r['lost_gpu_hours']:10.2f} {r['preemptions']:7.2f} {r['saved_on_notice']:5.2f} {r['finished']} "
              f"{','.join(r['gpu_types'])}")
    if out is not None:
        out.write_text(json.dumps({"runs": results, "summary": rows, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
