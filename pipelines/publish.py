"""Publishing multi-file outputs without rename: a commit object written last names what belongs.

Object stores (S3, GCS, Azure) have no atomic rename, so nothing is published by renaming a
folder. A multi-file output (predictions, generated data, trajectories) is written into a fresh
attempt folder under its target, and becomes visible at once when the one small commit object
``<target>/_commit.json`` naming that folder and its files is written (a single PUT is atomic,
and listing after it is consistent, on S3, GCS and Azure, as a rename is on a POSIX disk)::

    <target>/_commit.json                         {"folder": "a-20261204T201500.0417...-1f2e3d4c", "files": [...]}
    <target>/a-20261204T201500.0417...-1f2e3d4c/  the committed attempt
    <target>/a-20261204T193000.9001...-00aa11bb/  an older or killed attempt: never read, removed

Readers trust only committed files (:func:`committed_files`); a killed job leaves an attempt folder
no reader sees, which the next publication of the same target removes; a re-run commits a new
attempt and removes the old one, so a target converges to one complete output. Single files (a
checkpoint, the model artifact, ``summary.json``) are one atomic write each (``pipelines.storage``).
The dataset has its own commit object, its head (``pipelines.dataset``).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from pipelines import storage
from pipelines.formats import Record

COMMIT_FILE = "_commit.json"
ATTEMPT_PREFIX = "a-"


class PublishConflict(RuntimeError):
    """Another job committed the same target while this one wrote it: this job published nothing."""


@dataclass(frozen=True)
class Commit(Record):
    folder: str  # the committed attempt folder, relative to the target
    files: list[str]  # its files, relative to that folder, sorted
    created_at: str
    format: str = "dlpipe-commit/1"


def new_attempt_name() -> str:
    """A fresh attempt folder name; names sort by the time they were made (to the nanosecond)."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    return f"{ATTEMPT_PREFIX}{stamp}.{now % 10**9:09d}-{uuid.uuid4().hex[:8]}"


class PublishError(RuntimeError):
    """What a job reported writing is not all there: nothing was published."""


@dataclass
class Attempt:
    """One publication in progress: write into ``folder``, then :meth:`report` the files written
    (the tasks' own list); the commit names exactly those, each checked to exist."""

    folder: str
    reported: list[str] | None = None  # locations; None = nothing reported: every file in the folder

    def report(self, locations: Iterable[str]) -> None:
        self.reported = [*(self.reported or []), *locations]

    def files(self) -> list[str]:
        """The files to commit, relative to the folder, sorted: the reported ones (each must exist)."""
        if self.reported is None:
            return sorted(storage.relative(f.location, self.folder) for f in storage.list_files(self.folder))
        found = {storage.relative(f.location, self.folder)
                 for f in storage.list_files(self.folder, include_hidden=True)}
        wanted = {storage.relative(location, self.folder) for location in self.reported}
        missing = sorted(wanted - found)
        if missing:
            raise PublishError(f"{storage.redact(self.folder)}: {len(missing)} file(s) the tasks reported writing are "
                               f"missing ({', '.join(missing[:5])}): nothing was published; re-run the job")
        return sorted(wanted)


@contextmanager
def publishing(target: str, job: str = "") -> Iterator[Attempt]:
    """Yield a fresh :class:`Attempt` under ``target``; when the block succeeds, commit it (the
    files reported, else every file now in it), then remove older attempts. On an exception the
    attempt is removed and ``target`` stays as it was.

    The commit is conditional: it replaces only the ``_commit.json`` this job saw when it started
    (or creates it only if there was none), and only while this process still holds its leases.
    Of two jobs publishing one target at once, the later to commit gets :class:`PublishConflict`.
    While it writes, the attempt is registered like a reader (``pipelines.readers``), so another
    job's clean-up never removes it. ``job``: who writes, for those messages."""
    from pipelines.lease import verify_leases
    from pipelines.readers import ReadLease

    commit_path = storage.join(target, COMMIT_FILE)
    name = new_attempt_name()
    folder = storage.join(target, name)
    with ReadLease(target, job or f"a dlpipe job writing {name}") as owner:
        owner.name([name])
        before = storage.read_versioned(commit_path)  # the commit is conditional on this: no other job's in between
        storage.mkdirs(folder)
        attempt = Attempt(folder)
        try:
            yield attempt
            data = Commit(name, attempt.files(),
                          datetime.now(UTC).isoformat(timespec="seconds")).to_json().encode("utf-8")
            verify_leases()  # a job whose lease was taken over must not commit
            try:
                if before is None:
                    storage.create_if_absent(commit_path, data)
                else:
                    storage.replace_if_version(commit_path, data, before[1])
            except storage.WriteConflict:
                raise PublishConflict(f"{storage.redact(target)}: another job published it while this job was "
                                      "writing it, so this job's output was not published (nothing half-visible; "
                                      "its attempt folder is removed). Re-run to replace that job's output, or "
                                      "write to another target") from None
        except BaseException:
            storage.delete_dir(folder)
            raise
    remove_stale_attempts(target, name)


def check_committed(location: str, key: str) -> None:
    """Refuse a dlpipe output that was never committed (attempt folders, no ``_commit.json``: a job
    killed before its commit) instead of reading its partial files as data; ConfigError naming ``key``."""
    from pipelines.errors import ConfigError

    if not storage.is_dir(location) or storage.exists(storage.join(location, COMMIT_FILE)):
        return
    attempts = [storage.name(d) for d in storage.list_dirs(location) if storage.name(d).startswith(ATTEMPT_PREFIX)]
    if attempts:
        raise ConfigError(f"{key}={storage.redact(location)} holds {len(attempts)} uncommitted dlpipe attempt "
                          "folder(s) "
                          f"({attempts[0]}{', ...' if len(attempts) > 1 else ''}) and no {COMMIT_FILE}: the job that "
                          "wrote it was stopped before it committed, so its files may be partial. Re-run that job, "
                          "or point at a committed output", key=key)


def read_commit(target: str) -> Commit | None:
    """The commit of ``target``, or None when nothing was published there."""
    path = storage.join(target, COMMIT_FILE)
    if not storage.exists(path):
        return None
    return Commit.from_json(storage.read_text(path), storage.redact(path))


def is_published(target: str) -> bool:
    return read_commit(target) is not None


def committed_folder(target: str) -> str | None:
    """The committed attempt folder of ``target`` (None when nothing is committed)."""
    commit = read_commit(target)
    return storage.join(target, commit.folder) if commit else None


def committed_files(target: str, suffix: str = "") -> list[str]:
    """The committed files of ``target`` (ending in ``suffix``), sorted; [] when nothing is committed."""
    commit = read_commit(target)
    if commit is None:
        return []
    folder = storage.join(target, commit.folder)
    return [storage.join(folder, f) for f in commit.files if f.endswith(suffix)]


def remove_stale_attempts(target: str, committed: str) -> None:
    """Remove the attempt folders older than the committed one (a newer one may be another job's,
    still writing), except those a live reader of ``target`` still reads (``pipelines.readers``;
    a later publication removes them), and whatever an older dlpipe left there (``data/`` + ``_SUCCESS``)."""
    from pipelines.readers import kept_note, live_readers

    readers = live_readers(target)
    for entry in storage.list_dirs(target):
        name = storage.name(entry)
        if name.startswith(ATTEMPT_PREFIX) and name < committed:
            holders = readers.holders_of(name)
            if holders:
                print(f"dlpipe: kept the superseded output {storage.redact(entry)} {kept_note(entry, holders)}; "
                      "a later publication removes it", flush=True)
                continue
            storage.delete_dir(entry)
    for legacy in ("data", "_SUCCESS"):
        path = storage.join(target, legacy)
        if storage.is_dir(path):
            storage.delete_dir(path)
        elif storage.exists(path):
            storage.delete(path)
