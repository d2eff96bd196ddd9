"""The training recipe: one explicit loop from a TrainConfig to committed checkpoints and a PEFT adapter."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from train_core.checkpoint import CheckpointManager, TrainerState
from runspec.config import TrainConfig
from train_core.data.batching import BatchPlan, MicroBatch
from train_core.data.dataset import batch_plan, prepare_data
from train_core.cuda_setup import prefer_expandable_segments
from train_core.device import DevicePath, choose_device_path
from train_core.engine import Engine, build_engine
from train_core.distributed import Distributed
from runspec.errors import ConfigError
from train_core.errors import TrainingDiverged
from train_core.metrics import MetricsLog, peak_memory_gib
from train_core.models.loading import load_tokenizer
from train_core.models.sources import resolve_model
from train_core.flat_params import FlatParameters
from train_core.optim import build_optimizer, build_scheduler
from train_core.rng import capture_rng, restore_rng
from train_core.store import LocalStore, ObjectStore

ADAPTER_KEY = "adapter"


@dataclass
class TrainHooks:
    """Callbacks a runner (e.g. the Ray runner) plugs into the loop; all optional."""

    on_metrics: Callable[[dict], None] | None = None
    on_checkpoint: Callable[[int], None] | None = None
    stop_requested: Callable[[], bool] | None = None
    on_checkpoint_skipped: Callable[[int, list[str]], None] | None = None  # (resumed step, what was skipped)


@dataclass
class TrainResult:
    status: str  # "completed" or "stopped" (a stop was requested; the last step is checkpointed)
    step: int
    total_steps: int
    train_loss: float | None
    eval_loss: float | None
    device_path: str
    resumed_from: int | None
    losses: list[float] = field(default_factory=list)


class Trainer:
    """Holds the model, data plan, optimizer and run state of one training run."""

    def __init__(
        self,
        config: TrainConfig,
        store: ObjectStore | None = None,
        work_dir: Path | None = None,
        hooks: TrainHooks | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store if store is not None else LocalStore(config.output_dir)
        self.work_dir = Path(work_dir if work_dir is not None else config.output_dir)
        self.hooks = hooks or TrainHooks()
        self.dist = Distributed.from_environment()
        self._log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.checkpoints = CheckpointManager(self.store, self.work_dir / ".staging", keep=config.checkpoint.keep)

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self._log(message)

    def _setup(self) -> None:
        config = self.config
        prefer_expandable_segments()  # before the model is loaded, so its memory lands in expandable segments
        self.path: DevicePath = choose_device_path(config, workers=self.dist.world_size)
        self.log(f"device path: {self.path.describe()}")
        # The data first: a bad data file ends the run before minutes go into loading the model.
        self.tokenizer = load_tokenizer(resolve_model(config.model.name).path)
        self.data = prepare_data(config.data, self.tokenizer)
        self.log(self.data.summary())
        self.engine: Engine = build_engine(config, self.path)
        self.log(f"model: {self.engine.description}")
        self.engine.train()
        self.trainable = self.engine.trainable_parameters()
        self.log(f"lora: {sum(p.numel() for p in self.trainable):,} trainable parameters in {len(self.trainable)} tensors")
        self.plan: BatchPlan = batch_plan(self.data.train, config.data, config.training.seed, config.training.batch_size)
        self.total_steps = self.plan.total_steps(config.training.epochs, config.training.max_steps)
        self.micro_batch = self.path.micro_batch
        self.setup_optimizer()

    def setup_optimizer(self) -> None:
        """The adapters in one flat buffer, and the optimizer and learning-rate schedule over it."""
        self.flat = FlatParameters(self.trainable)
        self.optimizer = build_optimizer([self.flat.parameter], self.config.training, self.path.optimizer)
        self.scheduler = build_scheduler(self.optimizer, self.config.training, self.total_steps)

    def _refuse_silent_overwrite(self, resume: bool) -> None:
        latest = self.checkpoints.newest_step()
        if latest is not None and not resume:
            raise ConfigError(
                f"output_dir: {self.store.describe('checkpoints')} already holds checkpoints (latest step {latest}); "
                "pass --resume to continue that run, or choose another output_dir"
            )

    def _restore(self) -> TrainerState:
        fresh = TrainerState(
            step=0, epoch=0, cursor=0, tokens_seen=0,
            config_fingerprint=self.config.fingerprint(), world_size=self.dist.world_size,
        )
        restored = self.checkpoints.restore(self.work_dir / ".staging" / f"restore-rank{self.dist.rank}")
        if restored is None:
            return fresh
        latest, local = restored.step, restored.path
        where = self.store.describe("checkpoints")
        if restored.skipped:
            self.log(f"skipped damaged checkpoints ({'; '.join(restored.skipped)}); resuming from step {latest}")
            if self.hooks.on_checkpoint_skipped is not None and self.dist.is_main:
                self.hooks.on_checkpoint_skipped(latest, restored.skipped)
        state = TrainerState.from_json((local / "trainer_state.json").read_text(encoding="utf-8"))
        if state.config_fingerprint != fresh.config_fingerprint:
            raise ConfigError(
                f"output_dir: the checkpoint at {where} was written by a different config "
                f"(fingerprint {state.config_fingerprint}, now {fresh.config_fingerprint}); "
                "resume with the same config or use another output_dir"
            )
        from safetensors.torch import load_file

        device = self.path.device
        self.engine.load_adapter_state(load_file(str(local / "adapter_model.safetensors"), device=device))
        self._load_optimizer_state(torch.load(local / "optimizer.pt", map_location=device, weights_only=True), where)
        self.scheduler.load_state_dict(torch.load(local / "scheduler.pt", weights_only=True))
        if state.world_size == self.dist.world_size and len(state.rng) == self.dist.world_size:
            restore_rng(state.rng[self.dist.rank])
        else:
            torch.manual_seed(self.config.training.seed * 1_000_003 + state.step * 101 + self.dist.rank)
        shutil.rmtree(local, ignore_errors=True)
        self.log(f"resumed from step {latest} ({where})")
        return state

    def _load_optimizer_state(self, state: dict, where: str) -> None:
        try:
            self.optimizer.load_state_dict(state)
        except ValueError:
            raise ConfigError(
                f"output_dir: the checkpoint at {where} holds optimizer state for "
                f"{len(state['param_groups'][0]['params'])} separate tensors, written by a spottune that did not yet keep "
                "the adapters in one flat buffer; resume it with that version, or use another output_dir"
            ) from None

    def _refuse_non_finite(self, what: str, value: float | None = None) -> None:
        """Stop training before a NaN/inf reaches the optimizer, a checkpoint or the adapter."""
        if value is not None and math.isfinite(value):
            return
        latest = self.checkpoints.latest_step()
        kept = f"the last committed checkpoint (step {latest}) is intact" if latest else "no checkpoint was written"
        shown = "" if value is None else f" is {value}"
        raise TrainingDiverged(
            f"training diverged: {what}{shown}; {kept}; lower training.learning_rate "
            f"(now {self.config.training.learning_rate:g}) or set training.max_grad_norm"
        )

    def _check_weights_finite(self, when: str) -> None:
        if not bool(torch.isfinite(self.flat.parameter).all()):
            self._refuse_non_finite(f"the adapter weights hold NaN or inf {when}")

    def _save(self, state: TrainerState) -> None:
        self._check_weights_finite(f"at the checkpoint of step {state.step}")
        rng_states = self.dist.gather_objects(capture_rng())
        if self.dist.is_main:
            state.rng = rng_states
            state.world_size = self.dist.world_size

            def write(directory: Path) -> None:
                self.engine.save_adapter(directory)
                torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
                (directory / "trainer_state.json").write_text(state.to_json(), encoding="utf-8")

            self.checkpoints.save(state.step, write)
        self.dist.barrier()
        if self.hooks.on_checkpoint is not None:
            self.hooks.on_checkpoint(state.step)

    def _micro_step(self, batch: MicroBatch, normaliser: int) -> torch.Tensor:
        loss_sum = self.engine.loss_sum(batch.input_ids, batch.position_ids, batch.labels)
        (loss_sum / normaliser).backward()
        return loss_sum.detach()

    def _optimizer_step(self, state: TrainerState) -> dict:
        started = time.perf_counter()
        rows = self.plan.step_rows(state.epoch, state.cursor)
        normaliser = self.plan.target_count(rows)
        micro_batches = self.plan.micro_batches(rows, self.micro_batch, self.dist.rank, self.dist.world_size)
        loss_sum: torch.Tensor | float = 0.0  # summed on the device: a host copy per micro-batch would wait for it
        tokens = 0
        for batch in micro_batches:
            loss_sum = loss_sum + self._micro_step(batch, normaliser).double()
            tokens += batch.input_ids.numel()
        self.dist.all_reduce_in_place(self.flat.gather_grads())
        totals = self.dist.all_reduce_sum(torch.tensor([float(loss_sum), float(tokens)], dtype=torch.float64))
        self._refuse_non_finite(f"the loss of step {state.step + 1}", float(totals[0]) / normaliser)
        grad_norm = None
        if self.config.training.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_([self.flat.parameter], self.config.training.max_grad_norm))
            self._refuse_non_finite(f"the gradient norm of step {state.step + 1}", grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.engine.parameters_changed()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.path.device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        state.cursor += 1
        if state.cursor >= self.plan.steps_in_epoch(state.epoch):
            state.epoch, state.cursor = state.epoch + 1, 0
        state.step += 1
        state.tokens_seen += int(totals[1])
        loss = float(totals[0]) / normaliser
        state.loss_history.append({"step": state.step, "loss": loss, "lr": lr})
        record = {
            "step": state.step, "total_steps": self.total_steps, "epoch": state.epoch, "loss": loss, "lr": lr,
            "grad_norm": grad_norm, "tokens": int(totals[1]), "target_tokens": normaliser,
            "step_seconds": round(elapsed, 4), "tokens_per_s": totals[1].item() / elapsed,
            "time": time.time(), **peak_memory_gib(self.path.device),
        }
        return record

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Token-weighted mean loss over the eval set (None without one)."""
        if not self.data.eval:
            return None
        self.engine.eval()
        plan = BatchPlan(self.data.eval, 0, len(self.data.eval), self.config.data.max_seq_length, packing=True)
        total = torch.zeros(2, dtype=torch.float64)
        for batch in plan.micro_batches(plan.rows(0), self.micro_batch, self.dist.rank, self.dist.world_size):
            loss_sum = self.engine.loss_sum(batch.input_ids, batch.position_ids, batch.labels)
            total += torch.tensor([float(loss_sum), float(batch.num_targets)], dtype=torch.float64)
        total = self.dist.all_reduce_sum(total)
        self.engine.train()
        return float(total[0] / total[1])

    def save_adapter(self) -> str:
        """Write the final adapter (PEFT format) to `adapter/` in the store and return its location."""
        self._check_weights_finite("at the end of training")
        if self.dist.is_main:
            staging = self.work_dir / ".staging" / "adapter"
            self.engine.save_adapter(staging)
            self.tokenizer.save_pretrained(staging)
            self.store.upload_dir(staging, ADAPTER_KEY)
            shutil.rmtree(staging, ignore_errors=True)
        self.dist.barrier()
        return self.store.describe(ADAPTER_KEY)

    def run(self, resume: bool = False) -> TrainResult:
        self._refuse_silent_overwrite(resume)
        if self.dist.is_main:
            shutil.rmtree(self.work_dir / ".staging", ignore_errors=True)
        self.dist.barrier()
        self._setup()
        state = self._restore()
        resumed_from = state.step if state.step else None
        if self.dist.is_main:
            self.checkpoints.prune()
        metrics = MetricsLog(self.work_dir / "metrics.jsonl", self.total_steps, state.step, echo=self.log)
        every = self.config.checkpoint.interval_steps
        eval_every = self.config.training.eval_every
        eval_loss = None
        status = "completed"
        self.log(f"training: {self.total_steps} steps, batch {self.config.training.batch_size} sequences, "
                 f"micro-batch {self.micro_batch}, {self.dist.world_size} worker(s)")
        try:
            if state.step == 0 and self.data.eval:
                self._emit(metrics, {"step": 0, "eval_loss": self.evaluate(), "time": time.time()})
            while state.step < self.total_steps:
                record = self._optimizer_step(state)
                if state.step % self.config.training.log_every == 0 or state.step == self.total_steps:
                    self._emit(metrics, record)
                if eval_every and state.step % eval_every == 0 and state.step < self.total_steps:
                    eval_loss = self.evaluate()
                    self._emit(metrics, {"step": state.step, "eval_loss": eval_loss, "time": time.time()})
                stop = self.hooks.stop_requested is not None and self.hooks.stop_requested()
                stop = self.dist.any_true(stop)
                if state.step % every == 0 or state.step == self.total_steps or stop:
                    self._save(state)
                if stop and state.step < self.total_steps:
                    status = "stopped"
                    self.log(f"stop requested: checkpointed step {state.step} and stopped")
                    break
            if status == "completed":
                eval_loss = self.evaluate()
                if eval_loss is not None:
                    self._emit(metrics, {"step": state.step, "eval_loss": eval_loss, "time": time.time()})
                location = self.save_adapter()
                self.log(f"adapter: {location}")
        finally:
            metrics.close()
        summary = self.engine.run_summary()
        if summary is not None:
            self.log(summary)
        losses = [entry["loss"] for entry in state.loss_history]
        return TrainResult(
            status=status, step=state.step, total_steps=self.total_steps,
            train_loss=losses[-1] if losses else None, eval_loss=eval_loss,
            device_path=self.path.describe(), resumed_from=resumed_from, losses=losses,
        )

    def _emit(self, metrics: MetricsLog, record: dict) -> None:
        if self.dist.is_main:
            metrics.write(record)
        if self.hooks.on_metrics is not None:
            self.hooks.on_metrics(record)


def train(
    config: TrainConfig,
    resume: bool = False,
    store: ObjectStore | None = None,
    work_dir: Path | None = None,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Run (or resume) one fine-tune; checkpoints go to `store` (default: config.output_dir on local disk)."""
    return Trainer(config, store=store, work_dir=work_dir, hooks=hooks).run(resume=resume)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
