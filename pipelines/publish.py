"""Atomic publication of output folders: write to a temp folder, then rename into place.

A reader never sees half an output, and a re-run replaces instead of duplicating. Works on any
POSIX filesystem the driver and executors share (local disk for ``local[*]``, NFS on a cluster).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SUCCESS = "_SUCCESS"


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it replaces ``final`` and gets ``_SUCCESS``.

    On an exception the temp folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = final.parent / f".{final.name}.tmp-{token}"
    tmp.mkdir()
    try:
        yield tmp
        (tmp / SUCCESS).touch()
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: Path, final: Path) -> None:
    """Move ``src`` to ``final``, replacing any previous ``final`` with two renames."""
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.rename(final, old)
    os.rename(src, final)
    shutil.rmtree(old, ignore_errors=True)


def check_writable(path: str | Path, key: str) -> None:
    """Fail now, naming config ``key`` and the path, when ``path`` cannot be created or written.

    Checks the nearest existing ancestor: it must be a folder in which a file can be made (a real
    probe: permission bits say nothing for root or on read-only mounts). Jobs call this before any
    work, so a wrong output location costs seconds, not a whole run.
    """
    target = Path(path).absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {path} (under {key}): {existing} is a file, not a folder; "
                          f"point {key} at a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dlpipe-write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot create {path} (under {key}): cannot write in {existing} ({e.strerror}); "
                          f"choose a writable location for {key} or fix its permissions") from e


class OutputError(RuntimeError):
    """An output location cannot be written; the message names the config key and the path."""


def is_published(path: str | Path) -> bool:
    """True when ``path`` is a complete, published output."""
    return (Path(path) / SUCCESS).is_file()


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON to ``path`` via a temp file and ``os.replace`` (atomic on POSIX)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text to ``path`` via a temp file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
