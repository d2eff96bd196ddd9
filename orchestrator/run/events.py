"""The kinds of event a run's log holds, and the typed detail of each kind that has one.

Defined once: the controller writes events through StateStore.record (a kind, or a detail object that knows its
kind), and the ledger, progress views and report read them back through Event.data. The database keeps the kind
as its string and the detail as JSON, so runs written before these types existed read back unchanged; a field
an older run did not record reads as None. To add a kind: a member of EventKind, and a detail dataclass
registered with @detail_of when it carries fields someone reads back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, Callable, ClassVar, TypeVar


class EventKind(StrEnum):
    SUBMITTED = "submitted"
    WAITING = "waiting"
    BUDGET = "budget"
    LAUNCH = "launch"
    NODE_RUNNING = "node_running"
    WORKERS_STARTED = "workers_started"
    TRAINING = "training"
    CHECKPOINT = "checkpoint"
    CHECKPOINT_SKIPPED = "checkpoint_skipped"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    STORAGE_RESTORED = "storage_restored"
    NOTICE = "notice"
    NODE_LOST = "node_lost"
    PREEMPTED = "preempted"
    LOST = "lost"  # the attempt's node died with a controller that was down
    ERROR = "error"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    STOPPED = "stopped"  # by early stopping; its checkpoints are kept
    RETRY = "retry"
    TERMINATED = "terminated"
    ORPHAN_TERMINATED = "orphan_terminated"  # a node still rented for the run at its end, released
    CAPACITY_REFUSED = "capacity_refused"  # the provider could not rent the chosen offer; the next one is tried


def parse_kind(text: str) -> EventKind | str:
    """The kind of a stored event; a kind this version does not know (written by a newer one) stays a string."""
    try:
        return EventKind(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class EventDetail:
    """The fields one kind of event records; subclasses are registered for their kind with @detail_of."""

    kind: ClassVar[EventKind]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventDetail:
        return cls(**{field.name: data.get(field.name) for field in fields(cls)})


DETAILS: dict[EventKind, type[EventDetail]] = {}
Detail = TypeVar("Detail", bound=type[EventDetail])


def detail_of(kind: EventKind) -> Callable[[Detail], Detail]:
    def register(cls: Detail) -> Detail:
        cls.kind = kind
        DETAILS[kind] = cls
        return cls
    return register


def read_detail(kind: EventKind | str, data: dict[str, Any]) -> EventDetail | None:
    """The typed detail of a stored event, or None for a kind without one."""
    cls = DETAILS.get(kind) if isinstance(kind, EventKind) else None
    return cls.from_json(data) if cls is not None else None


@detail_of(EventKind.WAITING)
@dataclass(frozen=True)
class Waiting(EventDetail):
    reason: str


@detail_of(EventKind.BUDGET)
@dataclass(frozen=True)
class Budget(EventDetail):
    spent: float
    budget: float


@detail_of(EventKind.LAUNCH)
@dataclass(frozen=True)
class Launch(EventDetail):
    gpu: str
    market: str
    offer: str  # one line, e.g. '1xL4 spot local/local $0.2830/h'
    resume_from: int
    expected_usd: float | None
    expected_vram_gib: float | None
    expected_step_seconds: float | None
    settings: dict[str, Any]  # config fields the chosen plan row set, by dotted name


@detail_of(EventKind.WORKERS_STARTED)
@dataclass(frozen=True)
class WorkersStarted(EventDetail):
    world_size: int


@detail_of(EventKind.TRAINING)
@dataclass(frozen=True)
class Training(EventDetail):
    """The attempt's first step is done (the event's step is that step)."""

    step_seconds: float
    resumed_from: int


@detail_of(EventKind.CHECKPOINT)
@dataclass(frozen=True)
class Checkpoint(EventDetail):
    save_seconds: float | None


@detail_of(EventKind.CHECKPOINT_SKIPPED)
@dataclass(frozen=True)
class CheckpointSkipped(EventDetail):
    skipped: list[str]
    resumed_from: int


@detail_of(EventKind.STORAGE_UNAVAILABLE)
@dataclass(frozen=True)
class StorageUnavailable(EventDetail):
    error: str
    source: str  # controller | worker


@detail_of(EventKind.STORAGE_RESTORED)
@dataclass(frozen=True)
class StorageRestored(EventDetail):
    source: str


@detail_of(EventKind.NOTICE)
@dataclass(frozen=True)
class Notice(EventDetail):
    deadline: float
    notice_s: float
    reason: str


@detail_of(EventKind.NODE_LOST)
@dataclass(frozen=True)
class NodeLost(EventDetail):
    reason: str


@detail_of(EventKind.ORPHAN_TERMINATED)
@dataclass(frozen=True)
class OrphanTerminated(EventDetail):
    offer: str


@detail_of(EventKind.CAPACITY_REFUSED)
@dataclass(frozen=True)
class CapacityRefused(EventDetail):
    offer: str  # Offer.key, e.g. 'aws:g5.xlarge:us-east-1/us-east-1a:spot'
    code: str  # the provider's reason, e.g. InsufficientInstanceCapacity
    message: str


@detail_of(EventKind.PREEMPTED)
@dataclass(frozen=True)
class Preempted(EventDetail):
    cause: str  # a cluster.node.preemption.PreemptionCause
    reason: str
    reached_step: int
    lost_steps: int


@detail_of(EventKind.LOST)
@dataclass(frozen=True)
class Lost(EventDetail):
    cause: str
    reason: str


@detail_of(EventKind.ERROR)
@dataclass(frozen=True)
class Error(EventDetail):
    error: str
    retry: bool
    errors: int
    max_error_retries: int


@detail_of(EventKind.SUCCEEDED)
@dataclass(frozen=True)
class Succeeded(EventDetail):
    train_loss: float | None
    eval_loss: float | None


@detail_of(EventKind.STOPPED)
@dataclass(frozen=True)
class Stopped(EventDetail):
    eval_loss: float | None
    reached_step: int
    total_steps: int | None
    saved_usd: float  # what the trial's remaining steps would have cost
    pruner: str


@detail_of(EventKind.RETRY)
@dataclass(frozen=True)
class Retry(EventDetail):
    errors: int
