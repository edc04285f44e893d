"""Shared read leases: a job reading a dataset (or a published output) says so, and whoever would
remove superseded data keeps what a live reader still reads.

    <folder>/_readers/<token>.json    ReaderRecord: which job, until when, which sub-folders it reads

A reader registers *before* it reads the head (its record first names nothing, which protects
every folder), then names the version folders it opened; it renews the record every ``ttl / 3``
and deletes it when done. A writer removes superseded folders only *after* committing its new
head, and keeps those that any live record names (all of them while a record names nothing yet).
With list-after-write consistency (local disk, S3, GCS, Azure) that order means a reader either
is seen by the writer or reads the new head, so data is never pulled out from under it. A record
whose holder stopped renewing (killed) expires after its ``ttl`` and is removed by the next writer,
which then frees what it held; a dead holder on this machine is seen at once.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace

from pipelines import storage
from pipelines.formats import FormatError, Record
from pipelines.lease import holder_is_dead_here, process_started, this_machine

READERS_DIR = "_readers"


@dataclass(frozen=True)
class ReaderRecord(Record):
    job: str  # "dlpipe train (run r1)"
    host: str
    pid: int
    machine: str
    started: float  # the reader process' start time
    expires_at: float  # wall clock
    folders: list[str] = field(default_factory=list)  # sub-folders it reads (relative); see ``known``
    known: bool = False  # False: not yet named, so every folder is protected

    def describe(self) -> str:
        return f"{self.job} (pid {self.pid} on {self.host})"


@dataclass(frozen=True)
class Readers:
    """The live readers of a folder: what they protect and who they are."""

    records: list[ReaderRecord]
    unreadable: list[str]  # records that do not parse: they protect everything

    @property
    def protects_everything(self) -> bool:
        return bool(self.unreadable) or any(not r.known for r in self.records)

    def holders_of(self, folder: str) -> list[str]:
        """Who reads ``folder`` (a pending or unreadable record reads everything)."""
        found = [r.describe() for r in self.records if not r.known or folder in r.folders]
        return found + [f"an unreadable reader record ({storage.name(u)})" for u in self.unreadable]


class ReadLease:
    """A registered reader of ``root`` from :meth:`register` to :meth:`release` (a context manager)."""

    def __init__(self, root: str, job: str, ttl_s: float = 60.0) -> None:
        self.root, self.job, self.ttl_s = root, job, ttl_s
        self.path = storage.join(root, READERS_DIR, f"{uuid.uuid4().hex}.json")
        self.record = ReaderRecord(job, socket.gethostname(), os.getpid(), this_machine(),
                                   process_started(os.getpid()) or 0.0, 0.0)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def register(self) -> ReadLease:
        """Say this job reads ``root`` (every folder, until :meth:`name`); call before reading its head."""
        self._write()
        self._renewer = threading.Thread(target=self._renew, name="dlpipe-read-lease", daemon=True)
        self._renewer.start()
        return self

    def name(self, folders: list[str]) -> None:
        """Narrow the protection to the sub-folders this job opened."""
        self.record = replace(self.record, folders=sorted(set(folders)), known=True)
        self._write()

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        storage.delete(self.path)

    def __enter__(self) -> ReadLease:
        return self.register()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _write(self) -> None:
        self.record = replace(self.record, expires_at=time.time() + self.ttl_s)
        storage.write_text(self.path, self.record.to_json())

    def _renew(self) -> None:
        wait = self.ttl_s / 3
        while not self._stop.wait(wait):
            try:
                self._write()
                wait = self.ttl_s / 3
            except (OSError, storage.StorageError) as e:  # retry soon: the record must not expire meanwhile
                wait = self.ttl_s / 12
                print(f"dlpipe: warning: could not renew the read lease {storage.redact(self.path)}: {e}", flush=True)


def kept_note(folder: str, holders: list[str]) -> str:
    """Why a writer kept ``folder``: "(12.3 MiB): <who> still reads it"."""
    size = sum(f.size for f in storage.list_files(folder, include_hidden=True)) / 2**20
    return f"({size:.1f} MiB): {', '.join(holders)} still reads it"


def live_readers(root: str, remove_expired: bool = True) -> Readers:
    """The live reader records of ``root``; expired ones and those of a dead process on this
    machine are removed on the way (``remove_expired``)."""
    folder = storage.join(root, READERS_DIR)
    if not storage.is_dir(folder):
        return Readers([], [])
    records, unreadable = [], []
    now = time.time()
    for entry in storage.list_files(folder, recursive=False, suffix=".json"):
        try:
            record = ReaderRecord.from_json(storage.read_text(entry.location), storage.redact(entry.location))
        except FileNotFoundError:
            continue  # released while we listed
        except FormatError:
            unreadable.append(entry.location)
            continue
        if record.expires_at < now or holder_is_dead_here(record.machine, record.pid, record.started):
            if remove_expired:
                storage.delete(entry.location)
            continue
        records.append(record)
    return Readers(records, unreadable)
