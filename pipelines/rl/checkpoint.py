"""The RL formats: one iteration's record (a line of ``metrics.jsonl``) and the checkpoint
(:class:`RLCheckpoint`, one file per iteration, ``pipelines.checkpoint_store`` keeps the newest two).

Checkpoints of the first format (no ``format`` key: ``epoch`` for the iteration, the fingerprint
under ``manifest_hash``, the history as a JSON string) are read too, so old runs resume.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipelines import checkpoint_store, storage
from pipelines.formats import FormatError, Record, from_plain

FORMAT = "dlpipe-rl-checkpoint/2"


@dataclass(frozen=True)
class IterationRecord(Record):
    """One PPO iteration: its rollouts, its update's mean losses (flat in the file), its timings."""

    iteration: int  # 1-based
    env_steps: int  # total so far
    episodes: int  # episodes that ended in this iteration's rollouts
    mean_return: float | None  # of those episodes (None: none ended)
    mean_length: float | None
    lr: float
    rollout_s: float
    update_s: float
    env_steps_per_s: float
    losses: dict[str, float] = field(default_factory=dict)  # loss, policy_loss, value_loss, entropy, ...

    _FIXED: ClassVar[tuple[str, ...]] = ("iteration", "env_steps", "episodes", "mean_return", "mean_length", "lr",
                                         "rollout_s", "update_s", "env_steps_per_s")

    def loss(self, name: str) -> float:
        return self.losses.get(name, float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self._FIXED}, **self.losses}

    @classmethod
    def from_dict(cls, value: Any, where: str = "", key: str = "") -> IterationRecord:
        where = where or "iteration record"
        if not isinstance(value, dict) or any(k not in value for k in cls._FIXED):
            raise FormatError(f"{where}: an iteration record needs {', '.join(cls._FIXED)}")
        fixed = {k: value[k] for k in cls._FIXED}
        for name in ("mean_return", "mean_length", "lr", "rollout_s", "update_s", "env_steps_per_s"):
            if fixed[name] is not None:
                fixed[name] = from_plain(float, fixed[name], where, name)
        losses = {k: from_plain(float, v, where, k) for k, v in value.items() if k not in cls._FIXED}
        return cls(**fixed, losses=losses)


@dataclass(frozen=True)
class RLCheckpoint(Record):
    """The policy and optimizer after ``iteration`` iterations, the history, and the fingerprint of
    the settings that shaped them (a checkpoint of other settings is not resumed)."""

    iteration: int
    model: dict[str, Any]
    optimizer: Any
    history: list[IterationRecord]
    fingerprint: str
    actors: list[Any] = field(default_factory=list)  # each actor's environments as they were (pickled bytes)
    actor_macs: list[str] = field(default_factory=list)  # their HMACs under pipelines.rl.statekey's key
    format: str = FORMAT

    @classmethod
    def from_dict(cls, value: Any, where: str = "", key: str = "") -> RLCheckpoint:
        if isinstance(value, dict) and "format" not in value:  # the first format
            value = {"iteration": value.get("epoch"), "model": value.get("model"), "optimizer": value.get("optimizer"),
                     "history": json.loads(value.get("history") or "[]"), "fingerprint": value.get("manifest_hash"),
                     "format": FORMAT}
        return super().from_dict(value, where, key)


def save_rl_checkpoint(folder: str, checkpoint: RLCheckpoint) -> str:
    return checkpoint_store.save(folder, checkpoint.iteration, 0, checkpoint.to_dict())


def latest_rl_checkpoint(folder: str, fingerprint: str,
                         on_skip: Callable[[str, Exception], None] | None = None) -> RLCheckpoint | None:
    """The newest readable checkpoint in ``folder`` (None when there is none); a
    :class:`~pipelines.errors.ConfigError` when it was made with other settings."""
    from pipelines.errors import ConfigError

    loaded = checkpoint_store.load_latest(folder, RLCheckpoint.from_dict, on_skip)
    if loaded is None:
        return None
    found, _ = loaded
    if found.fingerprint != fingerprint:
        raise ConfigError(f"the checkpoints in {storage.redact(folder)} were made with other rl/model settings: use a "
                          f"new run_id, or delete {storage.redact(folder)} to start over", key="run_id")
    return found
