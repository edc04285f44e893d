"""Conditional writes: create a small object only if it is absent, replace it only if it is still
the version that was read. Leases and commits are built on these, so two jobs can never both win.

    read_versioned(loc)               -> (bytes, version) or None
    create_if_absent(loc, data)       -> version; WriteConflict when something is there
    replace_if_version(loc, data, v)  -> version; WriteConflict when it changed since v was read

What each store uses (``fencing(location)`` says it in words for ``--check`` and the docs):

- local disk: create = a complete temp file hard-linked to the name (``link`` fails when the name
  exists), file and folder fsynced; replace = under an exclusive ``flock`` on its folder, compare
  the content's hash, then ``os.replace``. Holds between processes of one host (and on network
  filesystems whose locks work).
- S3 (and S3-compatible servers that honour them): ``PutObject`` with ``If-None-Match: *`` /
  ``If-Match: <etag>`` through boto3.
- GCS, Azure, HDFS: not implemented in this version: a plain atomic write, ``fenced`` is False,
  and what that loses is said by ``fencing``.

A version is opaque: the content's SHA-256 prefix on local disk, the ETag on S3.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator
from typing import Any

from pipelines.storage import uri as _uri
from pipelines.storage.fs import _fsync_local, _temp_name
from pipelines.storage.uri import StorageError, fail

NOT_FENCED = {
    "gs": "GCS generation preconditions are not used yet",
    "abfs": "Azure ETag conditions are not used yet",
    "abfss": "Azure ETag conditions are not used yet",
    "az": "Azure ETag conditions are not used yet",
    "hdfs": "HDFS create-without-overwrite is not used yet",
}


class WriteConflict(StorageError):
    """The object was created or changed by someone else since this job looked: the write was refused."""


def fenced(location: str) -> bool:
    """Whether writes to ``location``'s store are conditional (see the module docstring)."""
    return _uri.scheme(location) not in NOT_FENCED


def fencing(location: str) -> str:
    """One line for ``--check``: how commits to ``location`` are fenced, or which guarantee is lost."""
    sch = _uri.scheme(location)
    if sch in NOT_FENCED:
        return (f"{sch}:// commits are not fenced ({NOT_FENCED[sch]}): two jobs that both believe they hold a "
                "lease (a paused holder, clocks out of sync) can both commit, the later one winning; "
                "keep one writer per dataset and run id")
    if sch == "s3":
        return "s3:// commits are fenced: conditional PUTs (If-None-Match / If-Match)"
    return "local commits are fenced: create by hard link, replace under an exclusive folder lock"


def _version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


# --- local disk ---------------------------------------------------------------------------------

def _write_temp(path: str, data: bytes) -> str:
    """A complete, fsynced hidden temp file beside ``path`` (named as fs.py names its temp files)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _temp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _local_create(location: str, path: str, data: bytes) -> str:
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)  # atomic, and refuses an existing name (O_EXCL semantics with full content)
    except FileExistsError:
        raise WriteConflict(f"{_uri.redact(location)}: {_CREATED}") from None
    finally:
        os.remove(tmp)
    _fsync_local(os.path.dirname(path))
    return _version_of(data)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on the folder holding ``path`` (no lock file left behind)."""
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _local_replace(location: str, path: str, data: bytes, version: str) -> str:
    with _locked(path):
        try:
            with open(path, "rb") as f:
                current = _version_of(f.read())
        except FileNotFoundError:
            raise WriteConflict(f"{_uri.redact(location)}: {_CHANGED}") from None
        if current != version:
            raise WriteConflict(f"{_uri.redact(location)}: {_CHANGED}")
        tmp = _write_temp(path, data)
        os.replace(tmp, path)
        _fsync_local(os.path.dirname(path))
    return _version_of(data)


# --- S3 -----------------------------------------------------------------------------------------

_clients: dict[tuple[int, str, str], Any] = {}  # (pid, endpoint, region) -> boto3 client


def _s3(location: str) -> tuple[Any, str, str]:
    """(boto3 client, bucket, key) for an s3:// location, the client built from the storage options."""
    import boto3
    from botocore.config import Config

    from pipelines.storage.fs import current_options

    parts = _uri.split(_uri.normalize(location))
    opts = current_options().resolved()
    cache_key = (os.getpid(), opts.s3_endpoint, opts.s3_region)
    client = _clients.get(cache_key)
    if client is None:
        client = boto3.client("s3", endpoint_url=opts.s3_endpoint or None, region_name=opts.s3_region or None,
                              config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3}))
        _clients[cache_key] = client
    return client, _uri.bucket_of(parts), parts.path.lstrip("/")


_CREATED, _CHANGED = "another job created it first", "another job changed or removed it since this job read it"


def _s3_call(location: str, verb: str, call: Any, conflict: str = "", **kwargs: Any) -> Any:
    """``call(**kwargs)``; a refused precondition (or, for a conditional replace, a missing object)
    becomes :class:`WriteConflict` saying ``conflict``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(**kwargs)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        missing = code in ("NoSuchKey", "404") or status == 404
        if conflict and (code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
                         or (missing and conflict == _CHANGED)):
            raise WriteConflict(f"{_uri.redact(location)}: {conflict}") from None
        if missing:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", _uri.redact(location)) from None
        raise fail(location, None, f"{verb} failed: {code or status}: {_uri.redact(str(e))}") from None
    except BotoCoreError as e:
        raise fail(location, None, f"{verb} failed: {_uri.redact(str(e))}") from None


# --- the three operations -------------------------------------------------------------------------

def read_versioned(location: str) -> tuple[bytes, str] | None:
    """The object's bytes and version, or None when there is none."""
    sch = _uri.scheme(location)
    if _uri.is_local(location):
        path = _uri.normalize(location)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, _version_of(data)
    if sch == "s3":
        client, bucket, key = _s3(location)
        try:
            reply = _s3_call(location, "reading", client.get_object, Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        return reply["Body"].read(), reply["ETag"]
    from pipelines.storage.fs import read_bytes

    try:
        data = read_bytes(location)
    except FileNotFoundError:
        return None
    return data, _version_of(data)


def create_if_absent(location: str, data: bytes) -> str:
    """Create the object with ``data``; :class:`WriteConflict` when one is there already. Its version."""
    sch = _uri.scheme(location)
    if _uri.is_local(location):
        return _local_create(location, _uri.normalize(location), data)
    if sch == "s3":
        client, bucket, key = _s3(location)
        reply = _s3_call(location, "writing", client.put_object, _CREATED, Bucket=bucket, Key=key, Body=data,
                         IfNoneMatch="*")
        created: str = reply["ETag"]  # boto3's reply is untyped
        return created
    from pipelines.storage.fs import exists, write_bytes

    if exists(location):  # not fenced on this store: a check, then a plain atomic write
        raise WriteConflict(f"{_uri.redact(location)}: {_CREATED}")
    write_bytes(location, data)
    return _version_of(data)


def replace_if_version(location: str, data: bytes, version: str) -> str:
    """Replace the object with ``data`` if it is still ``version``; :class:`WriteConflict` otherwise.
    The new version."""
    sch = _uri.scheme(location)
    if _uri.is_local(location):
        return _local_replace(location, _uri.normalize(location), data, version)
    if sch == "s3":
        client, bucket, key = _s3(location)
        reply = _s3_call(location, "writing", client.put_object, _CHANGED, Bucket=bucket, Key=key, Body=data,
                         IfMatch=version)
        replaced: str = reply["ETag"]  # boto3's reply is untyped
        return replaced
    from pipelines.storage.fs import write_bytes

    current = read_versioned(location)  # not fenced on this store: a check, then a plain atomic write
    if current is None or current[1] != version:
        raise WriteConflict(f"{_uri.redact(location)}: {_CHANGED}")
    write_bytes(location, data)
    return _version_of(data)
