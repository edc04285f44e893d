"""One live job per run id (and per dataset): a fenced lease object in the folder the job writes.

A job that writes a run folder (or a dataset) first takes its lease: the object ``_lease.json``
saying who holds it, until when, and its *fencing token*. The holder renews it every ``ttl / 3``
while it runs; a second job finds it held, says which job holds it and stops (or, with
``lease.wait_s``, waits for it to be released or to expire). A killed job stops renewing, so its
lease expires ``lease.ttl_s`` after its last renewal and its retry takes over then; a retry on the
same machine (same host name, boot and process namespace) as the killed job sees that its process
is gone and takes over at once.

Every write of the lease is conditional (``pipelines.storage``: create only if absent, replace only
the version this job read), so of two jobs that race for it exactly one wins, whatever the delays.
Each takeover raises the fencing token by one; a job whose renewal finds another version lost its
lease, and :meth:`Lease.verify` (called before every commit) re-reads the lease and refuses the
commit unless the token is still this job's. A holder whose last successful renewal is older than
``ttl - ttl/4`` stops before its next write (another job may take over any moment). A lease record
this version cannot read counts as held. Expiry compares wall clocks of different machines: a clock
that runs ahead can take a lease over early, which costs the old holder its next commit, never two
commits. On a store without conditional writes (``storage.fencing``) the same code runs with plain
writes, and only that last guarantee is lost.
"""
from __future__ import annotations

import functools
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pipelines import storage
from pipelines.errors import ConfigError
from pipelines.formats import FormatError, Record

LEASE_FILE = "_lease.json"
_HELD: list[Lease] = []  # this process's leases, for check_leases / verify_leases
POLL_S = 2.0  # while waiting for a held lease
STALE_FRACTION = 0.25  # a holder stops when its last renewal is older than ttl * (1 - this)


class LeaseHeld(ConfigError):
    """Another live job holds the lease; the message says which and what to do."""


class LeaseLost(RuntimeError):
    """This job's lease was taken over or could not be renewed in time: the job must stop writing."""


@dataclass(frozen=True)
class LeaseRecord(Record):
    holder: str  # this job's token
    job: str  # "dlpipe train run 20261204-1200"
    host: str
    pid: int
    acquired_at: float
    expires_at: float  # wall clock (time.time())
    fence: int = 0  # the fencing token: one more at every takeover
    released: bool = False  # given back: free for the next job, its fence kept
    machine: str = ""  # host, boot and pid namespace: where ``pid`` means this process
    started: float = 0.0  # the holder process' start time (a reused pid is another process)

    def describe(self) -> str:
        left = self.expires_at - time.time()
        return (f"{self.job} (pid {self.pid} on {self.host}, lease renewed until "
                f"{time.strftime('%H:%M:%S', time.localtime(self.expires_at))}, {max(0.0, left):.0f} s from now)")


@functools.lru_cache(maxsize=1)
def this_machine() -> str:
    """Host name, kernel boot id and pid namespace: two containers sharing a host name differ here."""
    boot = namespace = ""
    try:
        boot = storage.read_text("/proc/sys/kernel/random/boot_id").strip()
        namespace = os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]"
    except (OSError, storage.StorageError):
        pass  # not Linux: the host name alone (then no same-host shortcut is taken, see _dead_here)
    return f"{socket.gethostname()}/{boot}/{namespace}"


def process_started(pid: int) -> float | None:
    """The start time of process ``pid`` on this machine; None when there is none, -1 when it is another user's."""
    import psutil

    try:
        started: float = psutil.Process(pid).create_time()  # seconds since the epoch (psutil is untyped)
        return started
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # alive, another user's
        return -1.0


def holder_is_dead_here(machine: str, pid: int, started: float) -> bool:
    """The holder ran on this machine (host, boot, pid namespace) and its process is gone: a pid
    that is free, or taken by a process that started at another time."""
    if not machine or machine != this_machine() or machine.endswith("//"):
        return False
    now_started = process_started(pid)
    return now_started is None or (now_started > 0 and abs(now_started - started) > 1.0)


def _dead_here(held: LeaseRecord) -> bool:
    """The holder of ``held`` is gone from this machine (killed): its lease need not run out."""
    return holder_is_dead_here(held.machine, held.pid, held.started)


def _parse(data: bytes, where: str) -> LeaseRecord | None:
    try:
        return LeaseRecord.from_json(data.decode("utf-8"), where)
    except (FormatError, UnicodeDecodeError):
        return None


class Lease:
    """The lease on one folder, held from :meth:`acquire` to :meth:`release` (a context manager)."""

    def __init__(self, folder: str, job: str, ttl_s: float = 60.0, wait_s: float = 0.0, key: str = "run_id",
                 clock: Callable[[], float] = time.time) -> None:
        self.path = storage.join(folder, LEASE_FILE)
        self.job, self.ttl_s, self.wait_s, self.key = job, ttl_s, wait_s, key
        self.clock = clock
        self.token = uuid.uuid4().hex
        self.fence = 0  # this job's fencing token once acquired
        self._version: str | None = None  # the lease object as this job last wrote it
        self._acquired_at = 0.0
        self._renewed_at = 0.0  # time.monotonic() of the last successful write
        self._last_error = ""
        self._lock = threading.Lock()  # the renewer vs verify / release
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost: LeaseLost | None = None

    # --- taking and giving back ------------------------------------------------------------------

    def acquire(self) -> Lease:
        deadline = time.monotonic() + self.wait_s
        while True:
            current = storage.read_versioned(self.path)
            if current is None:
                if self._take(1, None):
                    break
                continue  # another job created it first: look at it
            data, version = current
            held = _parse(data, storage.redact(self.path))
            if held is not None and (held.released or held.holder == self.token
                                     or held.expires_at <= self.clock() or _dead_here(held)):
                if self._take(held.fence + 1, version):
                    break
                continue  # another job took it first: look again
            if time.monotonic() >= deadline:
                raise LeaseHeld(self._held_message(held), key=self.key)
            time.sleep(POLL_S)
        self._renewer = threading.Thread(target=self._renew, name="dlpipe-lease", daemon=True)
        self._renewer.start()
        _HELD.append(self)
        return self

    def _held_message(self, held: LeaseRecord | None) -> str:
        what = "run" if self.key == "run_id" else "dataset"
        if held is None:
            return (f"{storage.redact(self.path)} holds a lease record this dlpipe cannot read (written by another "
                    f"version, or damaged), so it counts as held: if no job is writing this {what}, delete that "
                    f"file and re-run")
        return (f"{storage.redact(self.path)} is held by {held.describe()}: another job is writing this {what} now. "
                f"Wait for it, use another {self.key}, or set lease.wait_s to wait up to that many seconds (a killed "
                f"job's lease expires lease.ttl_s={self.ttl_s:g}s after its last renewal)")

    def _record(self, fence: int, released: bool = False) -> bytes:
        now = self.clock()
        record = LeaseRecord(self.token, self.job, socket.gethostname(), os.getpid(), self._acquired_at or now,
                             now if released else now + self.ttl_s, fence, released, this_machine(),
                             process_started(os.getpid()) or 0.0)
        return record.to_json().encode("utf-8")

    def _take(self, fence: int, version: str | None) -> bool:
        """Write this job's lease with ``fence`` over ``version`` (None: create it); False when another job won."""
        self._acquired_at = self.clock()
        try:
            data = self._record(fence)
            if version is None:
                self._version = storage.create_if_absent(self.path, data)
            else:
                self._version = storage.replace_if_version(self.path, data, version)
        except storage.WriteConflict:
            return False
        self.fence, self._renewed_at = fence, time.monotonic()
        return True

    def release(self) -> None:
        """Stop renewing and mark the lease released (if it is still ours); its fence stays for the next job."""
        self._stop.set()
        if self in _HELD:
            _HELD.remove(self)
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        with self._lock:
            if self.lost is not None or self._version is None:
                return
            try:
                storage.replace_if_version(self.path, self._record(self.fence, released=True), self._version)
            except storage.WriteConflict:
                pass  # taken over meanwhile: it is the other job's now
            self._version = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- the object -------------------------------------------------------------------------------

    def read(self) -> LeaseRecord | None:
        """The lease record as the store has it now (None when absent or unreadable)."""
        current = storage.read_versioned(self.path)
        return None if current is None else _parse(current[0], storage.redact(self.path))

    def _renew(self) -> None:
        wait = self.ttl_s / 3
        while not self._stop.wait(wait):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._version = storage.replace_if_version(self.path, self._record(self.fence), self._version or "")
                    self._renewed_at, wait = time.monotonic(), self.ttl_s / 3
                except storage.WriteConflict:
                    self.lost = self._taken_over()
                    return
                except (OSError, storage.StorageError) as e:  # a store hiccup: retry soon, well before expiry
                    self._last_error, wait = str(e), self.ttl_s / 12
                    print(f"dlpipe: warning: could not renew {storage.redact(self.path)}: {e}", flush=True)

    def _taken_over(self) -> LeaseLost:
        held = self.read()
        who = held.describe() if held is not None else "another job (its record is unreadable)"
        return LeaseLost(f"{storage.redact(self.path)} was taken over by {who}: this job was not renewing it "
                         f"(paused longer than lease.ttl_s={self.ttl_s:g}s?) and stops writing")

    def check(self) -> None:
        """Raise :class:`LeaseLost` when the lease was taken over, or when its last successful renewal
        is so old that another job may take it over before this job's next write."""
        if self.lost is not None:
            raise self.lost
        age = time.monotonic() - self._renewed_at
        if self._renewed_at and age > self.ttl_s * (1 - STALE_FRACTION):
            raise LeaseLost(f"{storage.redact(self.path)}: this job could not renew its lease for {age:.0f} s "
                            f"(lease.ttl_s={self.ttl_s:g}s; last error: {self._last_error or 'none'}): another job may "
                            "take it over at any moment, so this job stops before writing again")

    def verify(self) -> int:
        """Before a commit: :meth:`check`, then re-read the lease from the store and confirm it is still
        this job's with this job's fencing token; the token. :class:`LeaseLost` naming the holder otherwise."""
        self.check()
        with self._lock:
            current = storage.read_versioned(self.path)
            held = None if current is None else _parse(current[0], storage.redact(self.path))
            if held is None or held.holder != self.token or held.fence != self.fence or held.released:
                self.lost = self._taken_over()
                raise self.lost
        return self.fence


def check_leases() -> None:
    """Raise :class:`LeaseLost` when a lease this process holds was taken over or went stale: jobs
    call it between stages, epochs and iterations, so a job that lost its run stops writing it."""
    for held in list(_HELD):
        held.check()


def verify_leases() -> None:
    """Before a commit: every lease this process holds is still its own on the store (fenced)."""
    for held in list(_HELD):
        held.verify()
