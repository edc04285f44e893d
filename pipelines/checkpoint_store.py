"""Checkpoint files in any store: one object per position, newest two kept, written off the step loop.

    epoch-0003.pt              after 3 whole epochs (RL: after 3 iterations)
    epoch-0003.step-000050.pt  after 3 whole epochs and 50 steps of the 4th

Each checkpoint is one atomic write (``pipelines.storage``: a temp file renamed on local disk,
one PUT on an object store), so a listed checkpoint is complete. :class:`CheckpointWriter`
serializes the state on the caller's thread (the snapshot is taken there) and uploads it on its
own thread: training goes on while a checkpoint travels to S3, and the next checkpoint waits for
the previous one. Which payload a file holds is the business of its format's owner
(``pipelines.train.checkpoint``, ``pipelines.rl.checkpoint``).
"""
from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from pipelines import storage

T = TypeVar("T")

KEEP = 2
_NAME = re.compile(r"epoch-(\d+)(?:\.step-(\d+))?\.pt")


def checkpoint_name(epoch: int, step: int = 0) -> str:
    """File name of the checkpoint after ``epoch`` whole epochs and ``step`` steps of the next."""
    return f"epoch-{epoch:04d}" + (f".step-{step:06d}" if step else "") + ".pt"


def _position(location: str) -> tuple[int, int]:
    found = _NAME.fullmatch(storage.name(location))
    return (int(found.group(1)), int(found.group(2) or 0)) if found else (-1, -1)


def checkpoint_files(folder: str) -> list[str]:
    """Checkpoint files in ``folder``, oldest position first ([] when there is none)."""
    if not storage.is_dir(folder):
        return []
    found = [f.location for f in storage.list_files(folder, recursive=False)
             if _NAME.fullmatch(storage.name(f.location))]
    return sorted(found, key=_position)


def latest_position(folder: str) -> tuple[int, int]:
    """(whole epochs, steps into the next) of the newest checkpoint file in ``folder``; (-1, -1) when
    there is none. Names only: nothing is read."""
    files = checkpoint_files(folder)
    return _position(files[-1]) if files else (-1, -1)


def snapshot(value: Any) -> Any:
    """``value`` with every tensor copied (dicts, lists and tuples rebuilt): what the next training step
    changes in place no longer reaches a checkpoint being written."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


def to_bytes(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save(folder: str, epoch: int, step: int, payload: dict[str, Any]) -> str:
    """Write one checkpoint now (on this thread) and prune older ones; its location."""
    location = storage.join(folder, checkpoint_name(epoch, step))
    _write(location, to_bytes(payload), folder)
    return location


def _write(location: str, data: bytes, folder: str) -> None:
    """Write one checkpoint durably, then prune: checkpoints positioned after it are from a timeline
    this run left (files that did not decode, which the resume skipped), and of those at or before
    it the newest :data:`KEEP` stay. By position, not by name order, so a run that had to restart
    from an earlier position never prunes the checkpoint it just wrote."""
    storage.write_bytes(location, data, durable=True)
    mine = _position(location)
    files = checkpoint_files(folder)
    for old in [f for f in files if _position(f) > mine] + [f for f in files if _position(f) <= mine][:-KEEP]:
        storage.delete(old)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (the store failed after the writer's own retries, if any)."""


class CheckpointReadError(RuntimeError):
    """A checkpoint could not be read from its store (after retries): the job stops instead of
    silently resuming from an older position or from scratch."""


READ_ATTEMPTS = 3
READ_RETRY_S = 1.0  # then 2 s: a store hiccup, not a damaged file


def _read(location: str) -> bytes:
    """The checkpoint's bytes, retried on store errors; :class:`CheckpointReadError` naming it after the last."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return storage.read_bytes(location)
        except (OSError, storage.StorageError) as e:
            if attempt == READ_ATTEMPTS:
                raise CheckpointReadError(
                    f"checkpoint {storage.redact(location)} could not be read after {READ_ATTEMPTS} attempts ({e}): "
                    "the job stops rather than resume from an older checkpoint. Check the store and re-run "
                    "(the same command resumes from it)") from None
            time.sleep(READ_RETRY_S * attempt)
    raise AssertionError("unreachable")


def load_latest(folder: str, decode: Callable[[dict[str, Any], str], T],
                on_skip: Callable[[str, Exception], None] | None = None) -> tuple[T, str] | None:
    """The newest usable checkpoint in ``folder``, or None when there is none: (``decode(payload,
    redacted location)``, e.g. a format's ``from_dict``; its location).

    A read error is retried, then raised (:class:`CheckpointReadError`); only a file that was read
    and does not decode (truncated by a disk that lied, or garbage) is skipped for the one before
    it, with ``on_skip`` told. When files exist but none decodes, ``on_skip`` hears of each, so a
    run never restarts from scratch without saying so."""
    for location in reversed(checkpoint_files(folder)):
        data = _read(location)
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling garbage raises anything; the file is unusable either way
            if on_skip is not None:
                on_skip(location, e)
            continue
        return decode(payload, storage.redact(location)), location
    return None


@dataclass
class WriteTimes:
    """How long checkpoints took: copying the state on the step thread, and serializing and writing (off it)."""

    serialize_s: float = 0.0  # the step thread's part: a copy of the state (pipelines.checkpoint_store.snapshot)
    write_s: float = 0.0
    waited_s: float = 0.0  # the step thread waiting for the previous write to finish
    count: int = 0


class CheckpointWriter:
    """Writes checkpoints to ``folder`` on a background thread, one at a time, in order."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.times = WriteTimes()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, epoch: int, step: int, payload: dict[str, Any]) -> str:
        """Copy ``payload``'s tensors now; serialize and write them in the background once the previous
        write is done (the step thread pays for a memory copy only)."""
        started = time.perf_counter()
        frozen = snapshot(payload)
        self.times.serialize_s += time.perf_counter() - started
        self.wait()
        location = storage.join(self.folder, checkpoint_name(epoch, step))

        def write() -> None:
            began = time.perf_counter()
            try:
                _write(location, to_bytes(frozen), self.folder)
            except BaseException as e:  # noqa: BLE001 - whatever the write raised is surfaced by the next submit or wait
                self._error = e
            self.times.write_s += time.perf_counter() - began

        self._thread = threading.Thread(target=write, name="dlpipe-checkpoint-writer", daemon=True)
        self._thread.start()
        self.times.count += 1
        return location

    def wait(self) -> None:
        """Block until the last submitted checkpoint is written; raise its error if it failed."""
        if self._thread is not None:
            began = time.perf_counter()
            self._thread.join()
            self.times.waited_s += time.perf_counter() - began
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointWriteError(f"writing a checkpoint to {storage.redact(self.folder)} failed: {error}; "
                                       "the same command resumes from the last one written") from error
