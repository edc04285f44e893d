"""Rank events: the closed set of typed messages a rank process sends to the driver.

A rank emits an event with ``RankContext.emit(event)``; the launcher carries it to the driver as
one JSON line (:func:`encode` / :func:`decode`, the one codec), where the training driver, the
progress display and the tracker select what they want by type::

    if isinstance(event, EpochEnded): tracker.log_metrics(event.record.figures(), step=event.record.epoch)

Every event carries the sending ``rank`` and the ``time`` it was sent (set by ``emit``). The set is
closed: :data:`EVENT_TYPES` lists every kind, and a line of any other kind is refused, not guessed.
:class:`Probe` is the one open-ended kind, for tests and benchmarks that report what a rank saw.

:class:`EpochRecord` is one epoch of training history: what the ``epoch`` event carries, one line
of ``metrics.jsonl``, and an entry of a checkpoint's history. Its file shape is flat
(``{"epoch": 3, "loss": ..., "accuracy": ..., "val_loss": ...}``), as it always was.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipelines.formats import FormatError, Record, TaggedCodec, from_plain

VAL_PREFIX = "val_"


@dataclass(frozen=True)
class EpochRecord(Record):
    """One epoch: the train figures averaged over its steps, and the validation figures."""

    epoch: int  # 1-based
    loss: float
    samples: int  # rows trained on in the epoch, all ranks together
    samples_per_s: float
    seconds: float
    data_wait_fraction: float  # of step time spent waiting for the loader
    metrics: dict[str, float] = field(default_factory=dict)  # the model's train metrics (accuracy, kl, ...)
    val: dict[str, float] = field(default_factory=dict)  # validation loss and metrics, without the val_ prefix

    _FIXED: ClassVar[tuple[str, ...]] = ("epoch", "loss", "samples", "samples_per_s", "seconds", "data_wait_fraction")

    @property
    def val_loss(self) -> float | None:
        return self.val.get("loss")

    def figures(self) -> dict[str, float]:
        """Every number of the epoch by its flat name (``loss``, ``accuracy``, ``val_loss``...), epoch excluded."""
        return {k: v for k, v in self.to_dict().items() if k != "epoch"}

    def to_dict(self) -> dict[str, Any]:
        flat: dict[str, Any] = {k: getattr(self, k) for k in self._FIXED}
        flat.update(self.metrics)
        flat.update({VAL_PREFIX + k: v for k, v in self.val.items()})
        return flat

    @classmethod
    def from_dict(cls, value: Any, where: str = "", key: str = "") -> EpochRecord:
        where = where or "epoch record"
        if not isinstance(value, dict):
            raise FormatError(f"{where}: key '{key or '(top level)'}' expects an epoch record, got {value!r}")
        missing = [k for k in cls._FIXED if k not in value]
        if missing:
            raise FormatError(f"{where}: epoch record lacks {', '.join(missing)}")
        rest = {k: v for k, v in value.items() if k not in cls._FIXED and k != "kind"}
        return cls(
            epoch=from_plain(int, value["epoch"], where, "epoch"),
            loss=from_plain(float, value["loss"], where, "loss"),
            samples=from_plain(int, value["samples"], where, "samples"),
            samples_per_s=from_plain(float, value["samples_per_s"], where, "samples_per_s"),
            seconds=from_plain(float, value["seconds"], where, "seconds"),
            data_wait_fraction=from_plain(float, value["data_wait_fraction"], where, "data_wait_fraction"),
            metrics={k: from_plain(float, v, where, k) for k, v in rest.items() if not k.startswith(VAL_PREFIX)},
            val={k[len(VAL_PREFIX):]: from_plain(float, v, where, k) for k, v in rest.items()
                 if k.startswith(VAL_PREFIX)},
        )


@dataclass(frozen=True, kw_only=True)
class RankEvent(Record):
    """Base of every event: who sent it and when (``RankContext.emit`` fills both in)."""

    kind: ClassVar[str]
    rank: int = -1
    time: float = 0.0


# --- the launcher's own ---------------------------------------------------------------------

@dataclass(frozen=True)
class Started(RankEvent):
    """The rank process is up (sent before the entry function runs)."""

    kind: ClassVar[str] = "started"
    pid: int
    host: str
    cores: list[int]  # the cores it is pinned to ([] = not pinned)
    log: str = ""  # its log file: "host:/path"


@dataclass(frozen=True)
class Joined(RankEvent):
    """The rank joined its rendezvous: once every rank has, the driver may close the rendezvous."""

    kind: ClassVar[str] = "joined"


@dataclass(frozen=True)
class Result(RankEvent):
    """What the entry function returned (plain data); the launcher hands rank 0's to its caller."""

    kind: ClassVar[str] = "result"
    result: Any


@dataclass(frozen=True)
class ConfigProblem(RankEvent):
    """A setting only the rank could check does not work here (e.g. fp16 on a device without it):
    the driver stops the stage and reports one config error line naming ``key``, without retrying."""

    kind: ClassVar[str] = "config_error"
    key: str
    message: str
    log: str  # where the rank's log file (with the traceback) is: "host:/path"


@dataclass(frozen=True)
class Failed(RankEvent):
    """The entry function raised: the one-line cause for the console; the traceback is only in
    the rank's log file, whose place ``log`` gives ("host:/path")."""

    kind: ClassVar[str] = "failed"
    error: str  # "ArrowInvalid: Parquet magic bytes not found ..." (the exception's first line)
    log: str


@dataclass(frozen=True)
class Probe(RankEvent):
    """What a test or benchmark rank entry saw (``name`` tells them apart)."""

    kind: ClassVar[str] = "probe"
    name: str
    data: dict[str, Any] = field(default_factory=dict)


# --- training -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceChosen(RankEvent):
    kind: ClassVar[str] = "device"
    device: str  # "cpu" or "cuda:N"
    gpu: str  # the GPU's address as Spark or the node names it ("" on CPU)
    reason: str
    precision: str


@dataclass(frozen=True)
class Resumed(RankEvent):
    """Training resumes from a checkpoint (rank 0); ``history`` is the checkpoint's."""

    kind: ClassVar[str] = "resume"
    epochs_done: int
    step: int
    history: list[EpochRecord]


@dataclass(frozen=True)
class Planned(RankEvent):
    kind: ClassVar[str] = "plan"
    steps_per_epoch: int
    shard_rows: int
    epochs: int
    start_epoch: int
    strategy: str
    held_parameters: int


@dataclass(frozen=True)
class StepProgress(RankEvent):
    """Sent by the reporting rank about 20 times an epoch: the running mean loss and throughput."""

    kind: ClassVar[str] = "progress"
    epoch: int  # 1-based
    step: int  # steps done in this epoch
    steps: int
    loss: float
    samples_per_s: float


@dataclass(frozen=True)
class EpochEnded(RankEvent):
    kind: ClassVar[str] = "epoch"
    record: EpochRecord


@dataclass(frozen=True)
class CheckpointSaved(RankEvent):
    kind: ClassVar[str] = "checkpoint"
    epoch: int  # the epoch the checkpoint is in (1-based)
    step: int


@dataclass(frozen=True)
class MemoryUse(RankEvent):
    kind: ClassVar[str] = "memory"
    parameters: int
    optimizer_bytes: int


EVENTS: TaggedCodec[RankEvent] = TaggedCodec("kind", (
    Started, Joined, Result, ConfigProblem, Failed, Probe,
    DeviceChosen, Resumed, Planned, StepProgress, EpochEnded, CheckpointSaved, MemoryUse,
), "rank event")
EVENT_TYPES = EVENTS.types


def encode(event: RankEvent) -> dict[str, Any]:
    """The event as plain data: ``{"kind": ..., "rank": ..., "time": ..., <its fields>}``."""
    return EVENTS.encode(event)


def decode(value: Any) -> RankEvent:
    """The event in plain data made by :func:`encode`; :class:`FormatError` for an unknown kind."""
    return EVENTS.decode(value)


def stamped(event: RankEvent, rank: int, when: float) -> RankEvent:
    """``event`` with its sender and time set."""
    return dataclasses.replace(event, rank=rank, time=when)
