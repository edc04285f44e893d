"""One live job per run id (and per dataset): a lease object in the folder the job writes.

A job that writes a run folder (or a dataset) first takes its lease: the object ``_lease.json``
saying who holds it and until when. The holder renews it every ``ttl / 3`` while it runs; a
second job finds it held, says which job holds it and stops (or, with ``lease.wait_s``, waits for
it to be released or to expire). A killed job stops renewing, so its lease expires ``lease.ttl_s``
after its last renewal and its retry takes over then; a retry on the same host as the killed job
sees that its process is gone and takes over at once.

Object stores have no compare-and-swap (in the pinned pyarrow), so taking a lease is write, wait,
verify: a job writes its lease, waits :data:`SETTLE_S`, and reads it back; of two jobs that raced,
the later write wins and the other one, reading someone else's lease, backs off. This holds as
long as a job writes within ``SETTLE_S`` of having seen the lease free, which one small PUT does.
Expiry compares wall clocks of different machines: keep them in sync (NTP), as any lease needs.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from pipelines import storage
from pipelines.errors import ConfigError
from pipelines.formats import FormatError, Record

LEASE_FILE = "_lease.json"
_HELD: list["Lease"] = []  # this process's leases, for check_leases
SETTLE_S = 1.0  # write, wait this long, verify
POLL_S = 2.0  # while waiting for a held lease


class LeaseHeld(ConfigError):
    """Another live job holds the lease; the message says which and what to do."""


class LeaseLost(RuntimeError):
    """This job's lease was taken over (it was not renewed in time): the job must stop writing."""


@dataclass(frozen=True)
class LeaseRecord(Record):
    holder: str  # this job's token
    job: str  # "dlpipe train run 20261204-1200"
    host: str
    pid: int
    acquired_at: float
    expires_at: float  # wall clock (time.time())

    def describe(self) -> str:
        left = self.expires_at - time.time()
        return (f"{self.job} (pid {self.pid} on {self.host}, lease renewed until "
                f"{time.strftime('%H:%M:%S', time.localtime(self.expires_at))}, {max(0.0, left):.0f} s from now)")


def _dead_here(held: LeaseRecord) -> bool:
    """The holder ran on this host and its process is gone (killed): its lease need not run out."""
    if held.host != socket.gethostname():
        return False
    try:
        os.kill(held.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Lease:
    """The lease on one folder, held from :meth:`acquire` to :meth:`release` (a context manager)."""

    def __init__(self, folder: str, job: str, ttl_s: float = 60.0, wait_s: float = 0.0, key: str = "run_id",
                 clock: Callable[[], float] = time.time) -> None:
        self.path = storage.join(folder, LEASE_FILE)
        self.job, self.ttl_s, self.wait_s, self.key = job, ttl_s, wait_s, key
        self.clock = clock
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost: LeaseLost | None = None

    # --- taking and giving back ------------------------------------------------------------------

    def acquire(self) -> "Lease":
        deadline = self.clock() + self.wait_s
        while True:
            held = self.read()
            if held is None or held.holder == self.token or held.expires_at <= self.clock() or _dead_here(held):
                self._write()
                time.sleep(SETTLE_S)
                again = self.read()
                if again is not None and again.holder == self.token:
                    break
                held = again  # another job wrote after us: it holds the lease
            if held is not None and self.clock() >= deadline:
                raise LeaseHeld(
                    f"{storage.redact(self.path)} is held by {held.describe()}: another job is writing this "
                    f"{'run' if self.key == 'run_id' else 'dataset'} now. Wait for it, use another {self.key}, or set "
                    f"lease.wait_s to wait up to that many seconds (a killed job's lease expires "
                    f"lease.ttl_s={self.ttl_s:g}s after its last renewal)", key=self.key)
            time.sleep(POLL_S)
        self._renewer = threading.Thread(target=self._renew, name="dlpipe-lease", daemon=True)
        self._renewer.start()
        _HELD.append(self)
        return self

    def release(self) -> None:
        """Stop renewing and remove the lease (if it is still ours)."""
        self._stop.set()
        if self in _HELD:
            _HELD.remove(self)
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        held = self.read()
        if held is not None and held.holder == self.token:
            storage.delete(self.path)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- the object -------------------------------------------------------------------------------

    def read(self) -> LeaseRecord | None:
        try:
            return LeaseRecord.from_json(storage.read_text(self.path), self.path)
        except FileNotFoundError:
            return None
        except FormatError:  # a torn or foreign file: treat it as free (the writer's verify decides)
            return None

    def _write(self) -> None:
        now = self.clock()
        record = LeaseRecord(self.token, self.job, socket.gethostname(), os.getpid(), now, now + self.ttl_s)
        storage.write_text(self.path, record.to_json())

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                held = self.read()
                if held is not None and held.holder != self.token:
                    self.lost = LeaseLost(f"{storage.redact(self.path)} was taken over by {held.describe()}: "
                                          f"this job was not renewing it (paused longer than lease.ttl_s="
                                          f"{self.ttl_s:g}s?) and stops writing")
                    return
                self._write()
            except OSError as e:  # a store hiccup: try again at the next renewal, well before expiry
                print(f"dlpipe: warning: could not renew {storage.redact(self.path)}: {e}", flush=True)

    def check(self) -> None:
        """Raise :class:`LeaseLost` when the lease was taken over."""
        if self.lost is not None:
            raise self.lost


def check_leases() -> None:
    """Raise :class:`LeaseLost` when a lease this process holds was taken over: jobs call it between
    stages, epochs and iterations, so a job that lost its run stops writing it."""
    for held in list(_HELD):
        held.check()
