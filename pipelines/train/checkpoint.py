"""The training checkpoint format: :class:`TrainCheckpoint`, one file per position (see
``pipelines.checkpoint_store`` for the files, where they live and how they are written).

On disk a checkpoint is the dict :meth:`TrainCheckpoint.to_dict` makes (tensors, numbers, strings
and lists: ``torch.load(weights_only=True)`` reads it); its keys are the ones checkpoints always
had, so a run resumes from checkpoints older versions wrote.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines import checkpoint_store, storage
from pipelines.errors import ConfigError
from pipelines.events import EpochRecord
from pipelines.formats import Record


@dataclass(frozen=True)
class RankState(Record):
    """One rank's state inside an epoch: its random generators and its running sums."""

    rng: Any  # torch.get_rng_state()
    sums: dict[str, float]
    cuda_rng: Any = None  # torch.cuda.get_rng_state() on a GPU rank (dropout, VAE noise), else None


@dataclass(frozen=True)
class TrainCheckpoint(Record):
    """Everything a resumed run needs to continue exactly where this one was."""

    model: dict[str, Any]  # full state dict under the model's own names
    optimizer: Any  # the strategy's optimizer state (one per phase, or per pipeline stage)
    epoch: int  # whole epochs done
    history: list[EpochRecord]
    manifest_hash: str  # identity of the data it was made on: other data is refused
    step: int = 0  # steps done of the next epoch (train.checkpoint_every_steps)
    ranks: list[RankState] = field(default_factory=list)  # per rank, when step > 0
    strategy: str = "horovod"  # checkpoints from before strategies existed were Horovod's
    config: dict[str, Any] = field(default_factory=dict)
    dataset_version: int = 0  # the dataset version trained on (0: not recorded)
    # elastic runs, inside an epoch: the positions of the epoch's order not used yet, as [start, end)
    # intervals (pipelines.train.elastic_order.Remaining); ranks then holds one state for any world size
    remaining: list[list[int]] = field(default_factory=list)


class CheckpointMismatch(ConfigError):
    """The newest checkpoint was made on other data; the message says what to do (a setting
    problem: no retry can fix it, so a rank reports it as one config error line)."""


def latest_checkpoint(folder: str, manifest_hash: str,
                      on_skip: Callable[[str, Exception], None] | None = None) -> TrainCheckpoint | None:
    """The newest readable checkpoint in ``folder``, or None. Refuses one made on other data."""
    loaded = checkpoint_store.load_latest(folder, TrainCheckpoint.from_dict, on_skip)
    if loaded is None:
        return None
    found, location = loaded
    if found.manifest_hash != manifest_hash:
        raise CheckpointMismatch(
            f"checkpoint {storage.redact(location)} was made on a different dataset (identity {found.manifest_hash} "
            f"!= {manifest_hash}): use a new run_id, or delete {storage.redact(folder)} to start over", key="run_id")
    return found
