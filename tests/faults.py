"""A storage fault injector for tests: fail, delay or kill at the Nth write-side call of the driver.

The write-side calls of ``pipelines.storage`` (every file write through ``open_output``, the
conditional creates and replaces of commits and leases, deletes, folder creation) are counted in
the order the job makes them. A :class:`Fault` picks one of them:

- ``fail``: that call raises a ``StorageError`` (a store hiccup); the job's own error handling runs.
- ``kill``: that call and every later one raise :class:`Killed` (a ``BaseException``, which no
  ``except Exception`` catches): the process is dead as far as the store is concerned, so none of
  the job's clean-up reaches it, exactly what a SIGKILL at that point leaves.
- ``delay``: that call sleeps first (for races).

:func:`injected` patches this process (the driver's commit points; Spark's Python workers write
their part files unpatched); :func:`install` patches a rank process for its life, where a kill is a
real SIGKILL (``Fault.on_kill``) and every call is also appended to a file (``Fault.log``), so the
test that started the rank can count them.
"""
from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest

KINDS = ("fail", "kill")


class Killed(BaseException):
    """The simulated process died at this storage call."""


@dataclass
class Fault:
    kind: str  # fail | kill | delay
    at: int  # the 1-based index of the write-side call it hits
    delay_s: float = 0.0
    calls: list[str] = field(default_factory=list)  # every write-side call seen: "op location"
    fired: str = ""  # the call it hit ("" = the job made fewer calls)
    log: str = ""  # a file every call is appended to (a process the test cannot look into)
    on_kill: Callable[[], None] | None = None  # what a kill does instead of raising Killed
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def describe(self) -> str:
        return f"{self.kind} at write call {self.at}" + (f" ({self.fired})" if self.fired else " (not reached)")


def _wrap(fault: Fault, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def call(location: str, *args: Any, **kwargs: Any) -> Any:
        from pipelines.storage import StorageError

        with fault.lock:  # a rank writes from two threads (checkpoints in the background): one index each
            fault.calls.append(f"{name} {location}")
            index = len(fault.calls)
            if fault.log:
                with open(fault.log, "a") as log:
                    log.write(f"{name} {location}\n")
        if fault.kind == "kill" and fault.fired:
            raise Killed(f"dead since {fault.fired}")
        if index == fault.at:
            fault.fired = f"{name} {location}"
            if fault.kind == "fail":
                raise StorageError(f"{location}: {name} failed: injected fault (no answer from the store in time)")
            if fault.kind == "kill":
                if fault.on_kill is not None:
                    fault.on_kill()
                raise Killed(f"killed at {fault.fired}")
            time.sleep(fault.delay_s)
        return real(location, *args, **kwargs)
    return call


def _write_calls() -> list[tuple[Any, str]]:
    """(module, function name) of every write-side storage call."""
    from pipelines.storage import conditional, fs

    return [(fs, name) for name in ("open_output", "delete", "delete_dir", "mkdirs")] + \
        [(conditional, name) for name in ("create_if_absent", "replace_if_version")]


@contextlib.contextmanager
def injected(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> Iterator[Fault]:
    """Patch the write-side storage calls of this process with ``fault`` for the block."""
    with monkeypatch.context() as patch:
        for module, name in _write_calls():
            patch.setattr(module, name, _wrap(fault, name, getattr(module, name)))
        yield fault


def install(fault: Fault) -> None:
    """Patch the write-side storage calls of this process with ``fault`` for the rest of its life."""
    for module, name in _write_calls():
        setattr(module, name, _wrap(fault, name, getattr(module, name)))


def counted(monkeypatch: pytest.MonkeyPatch, job: Callable[[], Any]) -> list[str]:
    """The write-side calls ``job`` makes when nothing fails (to aim faults at each of them)."""
    probe = Fault("delay", at=0)
    with injected(monkeypatch, probe):
        job()
    return probe.calls


def schedules(seed: int, calls: int, count: int) -> list[Fault]:
    """``count`` seeded faults over a job making ``calls`` write-side calls: every kind, and the
    call indexes spread over the whole job (first and last included), then random ones."""
    rng = random.Random(seed)
    spots = sorted({1, calls, *(round(1 + i * (calls - 1) / max(1, count // 2 - 1)) for i in range(count // 2))})
    faults = [Fault(KINDS[i % len(KINDS)], at) for i, at in enumerate(spots)]
    while len(faults) < count:
        faults.append(Fault(rng.choice(KINDS), rng.randint(1, calls)))
    return faults[:count]
