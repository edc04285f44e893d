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
    ``target`` stays as it was."""
    name = new_attempt_name()
    folder = storage.join(target, name)
    storage.mkdirs(folder)
    try:
        yield folder
    except BaseException:
        storage.delete_dir(folder)
        raise
    files = [storage.relative(f.location, folder) for f in storage.list_files(folder)]
    commit = Commit(name, files, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    storage.write_text(storage.join(target, COMMIT_FILE), commit.to_json())
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
    still writing) and whatever an older dlpipe left there (``data/`` + ``_SUCCESS``)."""
    for entry in storage.list_dirs(target):
        name = storage.name(entry)
        if name.startswith(ATTEMPT_PREFIX) and name < committed:
            storage.delete_dir(entry)
    for legacy in ("data", "_SUCCESS"):
        path = storage.join(target, legacy)
        if storage.is_dir(path):
            storage.delete_dir(path)
        elif storage.exists(path):
            storage.delete(path)
