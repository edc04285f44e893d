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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

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


@contextmanager
def publishing(target: str) -> Iterator[str]:
    """Yield a fresh attempt folder under ``target``; when the block succeeds, commit it (every
    file now in it), then remove older attempts. On an exception the attempt is removed and
    ``target`` stays as it was.

    The commit is conditional: it replaces only the ``_commit.json`` this job saw when it started
    (or creates it only if there was none), and only while this process still holds its leases.
    Of two jobs publishing one target at once, the later to commit gets :class:`PublishConflict`."""
    from pipelines.lease import verify_leases

    commit_path = storage.join(target, COMMIT_FILE)
    before = storage.read_versioned(commit_path)  # the commit is conditional on this: no other job's in between
    name = new_attempt_name()
    folder = storage.join(target, name)
    storage.mkdirs(folder)
    try:
        yield folder
        files = [storage.relative(f.location, folder) for f in storage.list_files(folder)]
        data = Commit(name, files, datetime.now(timezone.utc).isoformat(timespec="seconds")).to_json().encode("utf-8")
        verify_leases()  # a job whose lease was taken over must not commit
        try:
            if before is None:
                storage.create_if_absent(commit_path, data)
            else:
                storage.replace_if_version(commit_path, data, before[1])
        except storage.WriteConflict:
            raise PublishConflict(f"{storage.redact(target)}: another job published it while this job was writing "
                                  "it, so this job's output was not published (nothing half-visible; its attempt "
                                  "folder is removed). Re-run to replace that job's output, or write to another "
                                  "target") from None
    except BaseException:
        storage.delete_dir(folder)
        raise
    remove_stale_attempts(target, name)


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
    from pipelines.readers import live_readers

    readers = live_readers(target)
    for entry in storage.list_dirs(target):
        name = storage.name(entry)
        if name.startswith(ATTEMPT_PREFIX) and name < committed:
            holders = readers.holders_of(name)
            if holders:
                print(f"dlpipe: kept the superseded output {storage.redact(entry)} ({_size_mib(entry):.1f} MiB): "
                      f"{', '.join(holders)} still reads it; a later publication removes it", flush=True)
                continue
            storage.delete_dir(entry)
    for legacy in ("data", "_SUCCESS"):
        path = storage.join(target, legacy)
        if storage.is_dir(path):
            storage.delete_dir(path)
        elif storage.exists(path):
            storage.delete(path)


def _size_mib(folder: str) -> float:
    return sum(f.size for f in storage.list_files(folder, include_hidden=True)) / 2**20
