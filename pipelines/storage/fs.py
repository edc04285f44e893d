"""Filesystems and file operations for every location dlpipe touches (local paths and store URIs).

Built on pyarrow.fs (S3, GCS, HDFS, local); Azure goes through fsspec's adlfs wrapped in a PyFileSystem.
Credentials always come from each store's own chain; only non-secret options live in StorageOptions.
Filesystem objects stay inside the process that built them: ship location strings and StorageOptions.
Which options are in force: a Spark task's or a rank's own ``with using_options(...)`` block; on the
driver, those it set once (``set_driver_options``).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import secrets
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.storage import uri as _uri
from pipelines.storage.uri import OBJECT_STORES, StorageError, fail

# Regular calls ride out short outages; the probe (check_location) must answer within seconds.
_S3_CONNECT_TIMEOUT_S, _S3_ATTEMPTS = 5.0, 3
_PROBE_CONNECT_TIMEOUT_S, _PROBE_ATTEMPTS = 3.0, 2
_HDFS_HINT = ("pyarrow found no libhdfs/JVM: install a Hadoop client, set JAVA_HOME, ARROW_LIBHDFS_DIR "
              "(the folder holding libhdfs.so) and CLASSPATH=$(hadoop classpath --glob)")


@dataclass(frozen=True)
class StorageOptions:
    """Non-secret store settings: plain data, shipped from the driver to executors and ranks."""
    s3_endpoint: str = ""    # "http://127.0.0.1:9000"; "" = $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, else AWS
    s3_region: str = ""      # "" = $AWS_DEFAULT_REGION / $AWS_REGION, else the AWS SDK's default
    azure_account: str = ""  # account for az://container/path ("" = $AZURE_STORAGE_ACCOUNT_NAME)

    def resolved(self, environ: Mapping[str, str] | None = None) -> StorageOptions:
        """Fill empty fields from the standard environment variables (the driver does this once; the result
        is shipped)."""
        env = os.environ if environ is None else environ
        return replace(
            self,
            s3_endpoint=(self.s3_endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
                         or "").strip(),
            s3_region=(self.s3_region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "").strip(),
            azure_account=(self.azure_account or env.get("AZURE_STORAGE_ACCOUNT_NAME") or "").strip(),
        )


@dataclass(frozen=True)
class FileEntry:
    """A file found by list_files: its location (same form as the listed folder) and size in bytes."""
    location: str
    size: int


@dataclass(frozen=True, eq=False)
class _Scope:
    """One open :func:`using_options` block (compared by identity: nested equal blocks stay two)."""
    options: StorageOptions
    thread: int  # the thread that opened it
    task: int | None  # the Spark task attempt that opened it; None outside a Spark task


_driver_options = StorageOptions()  # set_driver_options; outside Spark tasks and scopes (defaults: a plain script)
_worker_process = False  # mark_worker_process: a rank has no driver options either
_scopes: tuple[_Scope, ...] = ()  # the open using_options blocks of this process, innermost last (replaced whole)
_cache: dict[tuple[int, str, str, StorageOptions], pafs.FileSystem] = {}  # (pid, store, options) -> filesystem
_lock = threading.Lock()
_LOCAL = pafs.LocalFileSystem()


def _check_options(options: object, caller: str) -> StorageOptions:
    if not isinstance(options, StorageOptions):
        raise TypeError(f"{caller} wants a StorageOptions, got {type(options).__name__}")
    return options


def _spark_task() -> int | None:
    """The attempt id of the Spark task this process is running; None on the driver, in a rank or a script."""
    if "pyspark" not in sys.modules:  # a rank or a plain script: never a Spark task
        return None
    from pyspark import TaskContext

    context = TaskContext.get()
    return None if context is None else context.taskAttemptId()


@contextlib.contextmanager
def using_options(options: StorageOptions) -> Iterator[StorageOptions]:
    """Use ``options`` for this process's store calls while the block runs, then put back what was in force
    before: in an executor's Python worker that is nothing, so a later task of another job that the worker
    runs (Spark reuses workers) and that forgot its own block fails in :func:`current_options`, never
    reaching a store with this task's options. Every Spark task body and every rank that touches a store
    runs in one, with the options its job shipped; the block yields them.

    The value is process-wide on purpose, not a thread-local or a contextvar: threads started inside the
    block (the loader's read-ahead and Petastorm's reader threads; plain threads inherit no contextvars)
    read the store with the same options. So blocks on two threads at once must agree: opening one while
    another thread holds a block with other options is refused. Nested blocks on one thread: the innermost
    wins until it ends. In a Spark task only the task's own blocks count (one an earlier task left open,
    a generator Spark never closed, is dropped).
    """
    global _scopes
    scope = _Scope(_check_options(options, "using_options"), threading.get_ident(), _spark_task())
    with _lock:
        # a block an earlier task of this reused worker left open is stale; only this task's count
        _scopes = tuple(s for s in _scopes if s.task is None or s.task == scope.task)
        if any(s.task == scope.task and s.thread != scope.thread and s.options != options for s in _scopes):
            raise StorageError("another thread of this process uses other storage options: they are process-wide "
                               "(read-ahead threads share them), so run jobs with other options in another process")
        _scopes = (*_scopes, scope)
    try:
        yield options
    finally:
        with _lock:
            _scopes = tuple(s for s in _scopes if s is not scope)


def set_driver_options(options: StorageOptions) -> None:
    """The driver's options, for the rest of the process: what its store calls use outside any
    :func:`using_options` block, and what its jobs ship to tasks and ranks (read with
    :func:`current_options`). ``dlpipe`` sets them once, resolved, before Spark starts
    (``pipelines.cli.prepare``). Refused in a Spark task: its worker outlives the task, so a task uses
    :func:`using_options`. Empty fields still fall back to the environment."""
    global _driver_options
    _check_options(options, "set_driver_options")
    if _spark_task() is not None:
        raise StorageError("set_driver_options was called in a Spark task: a task uses "
                           "`with pipelines.storage.using_options(<the job's StorageOptions>):` (a dlpipe bug)")
    _driver_options = options


def mark_worker_process() -> None:
    """This process is one dlpipe started for a job (a training rank): like a Spark task it has no
    driver options, so a store call outside the job's :func:`using_options` block fails instead of
    silently using the environment's defaults. ``pipelines.launcher.rank`` calls it at start."""
    global _worker_process
    _worker_process = True


def current_options() -> StorageOptions:
    """The options in force (not yet resolved against the environment): the innermost open
    :func:`using_options` block's, else the driver's (:func:`set_driver_options`; the defaults if never
    set). A Spark task has no driver options, and a task's Python worker does not inherit the driver's:
    a task that reaches a store outside a block of its own fails here, instead of silently reaching the
    default endpoint and region, or another task's."""
    task = _spark_task()
    for scope in reversed(_scopes):  # one read of the tuple: another thread replaces it whole
        if scope.task == task:
            return scope.options
    if task is not None or _worker_process:
        where, body = ("a Spark task", "the task body") if task is not None else ("a rank process", "the rank's entry")
        raise StorageError(f"{where} reached a store outside its job's storage options: {body} must run "
                           "in `with pipelines.storage.using_options(<the job's StorageOptions>):` (a dlpipe bug)")
    return _driver_options


# --- building filesystems -------------------------------------------------------------------------------

def _s3_endpoint(endpoint: str, location: str, key: str | None) -> tuple[str, str]:
    """"http://host:port" -> ("host:port", "http"); a bare "host:port" means https."""
    parsed = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.strip("/") or parsed.query:
        raise fail(location, key, f"endpoint '{_uri.redact(endpoint)}' (storage option s3_endpoint or "
                                  "$AWS_ENDPOINT_URL) must look like http(s)://host:port")
    return parsed.netloc, parsed.scheme


def _build(parts: _uri.Parts, opts: StorageOptions, location: str, key: str | None,
           probe: bool) -> pafs.FileSystem:
    sch = parts.scheme
    if sch == "s3":
        kwargs: dict[str, Any] = dict(
            connect_timeout=_PROBE_CONNECT_TIMEOUT_S if probe else _S3_CONNECT_TIMEOUT_S,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=_PROBE_ATTEMPTS if probe else _S3_ATTEMPTS))
        if opts.s3_region:
            kwargs["region"] = opts.s3_region
        if opts.s3_endpoint:
            # A directly built S3FileSystem ignores $AWS_ENDPOINT_URL: pass the endpoint explicitly.
            kwargs["endpoint_override"], kwargs["scheme"] = _s3_endpoint(opts.s3_endpoint, location, key)
        return pafs.S3FileSystem(**kwargs)
    if sch == "gs":
        return pafs.GcsFileSystem(retry_time_limit=datetime.timedelta(seconds=10) if probe else None)
    if sch == "hdfs":
        host, _, port = parts.authority.rpartition(":") if ":" in parts.authority else (parts.authority, "", "0")
        if not port.isdigit():
            raise fail(location, key, "write hdfs://NAMENODE:PORT/path, or hdfs:///path for the cluster's default")
        try:
            # host "default": the cluster's fs.defaultFS from the Hadoop configuration (hdfs:///path)
            return pafs.HadoopFileSystem(host or "default", int(port or 0))
        except (OSError, RuntimeError) as exc:
            text = str(exc)
            if any(word in text for word in ("libjvm", "libhdfs", "JAVA_HOME", "CLASSPATH", "jni")):
                raise fail(location, key, f"hdfs: {_HDFS_HINT} ({text.splitlines()[0]})") from None
            raise fail(location, key, f"cannot connect to HDFS: {_explain(exc, opts, location)}") from None
    if sch in ("abfs", "abfss", "az"):
        return _azure(parts, opts, location, key)
    raise fail(location, key, f"no filesystem for scheme '{sch}'")


def _azure(parts: _uri.Parts, opts: StorageOptions, location: str, key: str | None) -> pafs.FileSystem:
    """adlfs (pyarrow 14 has no Azure filesystem) wrapped so it behaves like any pyarrow filesystem."""
    try:
        import adlfs  # optional dependency
    except ImportError:
        raise fail(location, key, "Azure locations need the adlfs package: pip install adlfs") from None
    account = _azure_account(parts, opts)
    if not account:
        raise fail(location, key, "az:// needs a storage account: set the storage option azure_account or "
                                  "$AZURE_STORAGE_ACCOUNT_NAME, or write "
                                  "abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/path")
    kwargs: dict[str, Any] = {"account_name": account}
    if "AZURE_STORAGE_ANON" not in os.environ:
        kwargs["anon"] = False  # no anonymous fallback: use the Azure credential chain
    return pafs.PyFileSystem(pafs.FSSpecHandler(adlfs.AzureBlobFileSystem(**kwargs)))


def _azure_account(parts: _uri.Parts, opts: StorageOptions) -> str:
    """abfs://container@ACCOUNT.dfs.core.windows.net carries the account; az:// takes it from the options."""
    if parts.scheme == "az":
        return opts.azure_account
    return parts.authority.split("@", 1)[1].split(".", 1)[0]


def _fs_path(parts: _uri.Parts) -> str:
    """Path inside the store's filesystem: "bucket/key" (s3, gs), "container/path" (Azure), "/path" (HDFS)."""
    if parts.scheme == "hdfs":
        return parts.path or "/"
    return _uri.bucket_of(parts) + parts.path


def _resolve(location: str, key: str | None = None, *, probe: bool = False,
             options: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    if _uri.is_local(location):
        _uri.check_uri(location, key or "")
        return _LOCAL, _uri.normalize(location)
    _uri.check_uri(location, key or "")
    parts = _uri.split(_uri.normalize(location))
    opts = (options or current_options()).resolved()
    if probe:
        return _build(parts, opts, location, key, probe=True), _fs_path(parts)
    if parts.scheme in ("abfs", "abfss", "az"):
        store = ("azure", _azure_account(parts, opts))
    else:
        store = (parts.scheme, parts.authority)
    # the pid: a forked child (Spark's Python workers) must not reuse its parent's network clients
    cache_key = (os.getpid(), *store, opts)
    with _lock:
        fs = _cache.get(cache_key)
    if fs is None:
        fs = _build(parts, opts, location, key, probe=False)
        with _lock:
            fs = _cache.setdefault(cache_key, fs)
    return fs, _fs_path(parts)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding ``location`` (cached per store and options) and the path inside it."""
    return _resolve(location)


# --- error messages -------------------------------------------------------------------------------------

def _endpoint(location: str, opts: StorageOptions) -> tuple[str, str]:
    """The store's endpoint as a user would name it, and the setting that decides it."""
    scheme = _uri.split(_uri.normalize(location)).scheme if location and not _uri.is_local(location) else "s3"
    if scheme == "gs":
        return "the GCS endpoint (storage.googleapis.com)", "the network, DNS and any proxy"
    if scheme in ("abfs", "abfss", "az"):
        return "the Azure storage account's endpoint", "the storage option azure_account, the network and DNS"
    if scheme == "hdfs":
        return "the HDFS NameNode", "the host:port in the URI and that the NameNode runs"
    return opts.s3_endpoint or "the AWS default endpoint", "the storage option s3_endpoint / $AWS_ENDPOINT_URL"


def _explain(exc: BaseException, opts: StorageOptions | None = None, location: str = "") -> str:
    """A readable cause for a pyarrow/OS error at ``location`` (first line only, credentials redacted)."""
    text = str(exc)
    endpoint, setting = _endpoint(location, opts or current_options().resolved())
    if "Resolving host" in text or "resolve host" in text or "curlCode: 6" in text:
        return f"cannot resolve the host of {endpoint}: check {setting}"
    if "curlCode: 28" in text or "Timeout was reached" in text or "timed out" in text.lower():
        return f"no answer from {endpoint} in time: check {setting}"
    if "NETWORK_CONNECTION" in text or "Couldn't connect" in text or "Connection refused" in text:
        return f"endpoint unreachable: nothing answers at {endpoint}; check {setting} and that the server is running"
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text or "bucket does not exist" in text:
        return "the bucket does not exist: create it or fix the bucket name"
    if any(w in text for w in ("INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH",
                               "SignatureDoesNotMatch", "EXPIRED_TOKEN", "ExpiredToken")):
        return "the store rejected the credentials: fix the store's standard credential chain (env vars, profile, role)"
    if any(w in text for w in ("ACCESS_DENIED", "AccessDenied", "Forbidden")):
        return "access denied: the credentials from the store's standard chain lack permission here"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return "read-only filesystem"
    if isinstance(exc, NotADirectoryError):
        return "a file is in the way where a folder is needed"
    first = text.splitlines()[0] if text else type(exc).__name__
    return _uri.redact(first)


@contextlib.contextmanager
def _errors(location: str, verb: str, key: str | None = None) -> Iterator[None]:
    """Turn store errors into one-line StorageErrors; missing files stay FileNotFoundError (with the URI)."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", _uri.redact(location)) from None
    except (OSError, pa.ArrowException) as exc:
        raise fail(location, key, f"{verb} failed: {_explain(exc, location=location)}") from None


# --- queries --------------------------------------------------------------------------------------------

def _info(location: str) -> pafs.FileInfo:
    fs, path = filesystem(location)
    with _errors(location, "stat"):
        return fs.get_file_info(path)


def exists(location: str) -> bool:
    """True when a file or folder (object stores: any object under the prefix) is at ``location``."""
    if _uri.is_local(location):
        return os.path.exists(_uri.normalize(location))
    found: bool = _info(location).type != pafs.FileType.NotFound  # pyarrow is untyped
    return found


def is_file(location: str) -> bool:
    """True when ``location`` is a file (an object)."""
    if _uri.is_local(location):
        return os.path.isfile(_uri.normalize(location))
    file: bool = _info(location).type == pafs.FileType.File  # pyarrow is untyped
    return file


def is_dir(location: str) -> bool:
    """True for a folder; on object stores when any object has this prefix or a directory marker exists."""
    if _uri.is_local(location):
        return os.path.isdir(_uri.normalize(location))
    folder: bool = _info(location).type == pafs.FileType.Directory  # pyarrow is untyped
    return folder


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def _matches(rel: str, suffix: str | tuple[str, ...] | None) -> bool:
    return suffix is None or rel.endswith(suffix)


def list_files(location: str, *, recursive: bool = True, suffix: str | tuple[str, ...] | None = None,
               include_hidden: bool = False) -> list[FileEntry]:
    """Files under the folder ``location`` (or the file itself), sorted by location; missing -> [].

    Hidden: any path component below ``location`` starting with "." or "_" (temp files, _SUCCESS, markers).
    """
    root = _uri.normalize(location)
    if _uri.is_local(root):
        return _list_local(root, recursive, suffix, include_hidden)
    fs, path = filesystem(root)
    with _errors(location, "listing"):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [FileEntry(root, info.size)] if _matches(root, suffix) else []
        if info.type == pafs.FileType.NotFound:
            return []
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    prefix = path.rstrip("/") + "/"
    entries = []
    for fi in infos:
        fi_path = urlsplit(fi.path).path if "://" in fi.path else fi.path  # HDFS may answer full URIs
        if fi.type != pafs.FileType.File or not fi_path.startswith(prefix):
            continue
        rel = fi_path[len(prefix):]
        if rel.endswith("_$folder$") or (not include_hidden and _hidden(rel)) or not _matches(rel, suffix):
            continue  # "_$folder$": Hadoop's S3 directory markers
        entries.append(FileEntry(_uri.join(root, rel), fi.size))
    return sorted(entries, key=lambda e: e.location)


def list_dirs(location: str) -> list[str]:
    """The folders directly under ``location`` (object stores: the common prefixes), sorted; missing -> []."""
    root = _uri.normalize(location)
    if _uri.is_local(root):
        if not os.path.isdir(root):
            return []
        return sorted(os.path.join(root, n) for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    fs, path = filesystem(root)
    with _errors(location, "listing"):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    names = {(urlsplit(fi.path).path if "://" in fi.path else fi.path).rstrip("/").rsplit("/", 1)[-1]
             for fi in infos if fi.type == pafs.FileType.Directory}
    return sorted(_uri.join(root, n) for n in names if n)


def _list_local(root: str, recursive: bool, suffix: str | tuple[str, ...] | None,
                include_hidden: bool) -> list[FileEntry]:
    if os.path.isfile(root):
        return [FileEntry(root, os.path.getsize(root))] if _matches(root, suffix) else []
    entries = []
    for folder, dirs, files in os.walk(root):
        if not include_hidden:
            dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        if not recursive:
            dirs[:] = []
        for file_name in files:
            if (include_hidden or not file_name.startswith((".", "_"))) and _matches(file_name, suffix):
                full = os.path.join(folder, file_name)
                with contextlib.suppress(FileNotFoundError):  # removed while listing
                    entries.append(FileEntry(full, os.path.getsize(full)))
    return sorted(entries, key=lambda e: e.location)


# --- reads ----------------------------------------------------------------------------------------------

def read_bytes(location: str) -> bytes:
    """The whole content of the file at ``location``; FileNotFoundError when missing."""
    fs, path = filesystem(location)
    with _errors(location, "reading"):
        if fs is _LOCAL:
            with open(path, "rb") as f:
                return f.read()
        with fs.open_input_stream(path) as stream:
            data: bytes = stream.read()  # pyarrow is untyped
            return data


def read_text(location: str) -> str:
    """The file at ``location`` decoded as UTF-8."""
    return read_bytes(location).decode("utf-8")


def open_input(location: str) -> pa.NativeFile:
    """A random-access file (Parquet footers, row groups); the caller closes it."""
    fs, path = filesystem(location)
    with _errors(location, "opening"):
        return fs.open_input_file(path)


# --- writes ---------------------------------------------------------------------------------------------

def _temp_name(path: str, sep: str = os.sep) -> str:
    folder, _, base = path.rpartition(sep)
    return f"{folder}{sep}.{base}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def _fsync_local(path: str) -> None:
    """fsync a local file or folder: its content (or its entries) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_output(location: str, durable: bool = False) -> Iterator[pa.NativeFile]:
    """A stream that appears at ``location`` only when the block ends without error.

    Local and HDFS: a hidden temp file beside it, renamed over ``location`` on success, removed on error.
    Object stores: the upload completes on success; on error the (possibly completed) object is deleted.
    ``durable``: on local disk, the file is fsynced before the rename and its folder after it (a
    checkpoint must survive a power cut once it is listed); object stores are durable on success.
    """
    fs, path = filesystem(location)
    sch = _uri.scheme(location)
    if sch in OBJECT_STORES:
        with _errors(location, "writing"):
            stream = fs.open_output_stream(path)
        try:
            yield stream
        except BaseException:
            # pyarrow 14 cannot abort an upload from Python: close (it may complete) then delete the object.
            with contextlib.suppress(Exception):
                stream.close()
            with contextlib.suppress(Exception):
                fs.delete_file(path)
            raise
        with _errors(location, "writing"):
            stream.close()  # the PUT / multipart completion happens here
        return
    local = fs is _LOCAL
    tmp = _temp_name(path, os.sep if local else "/")
    with _errors(location, "writing"):
        if local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            stream = pa.OSFile(tmp, "wb")
        else:
            stream = fs.open_output_stream(tmp)
    try:
        yield stream
        with _errors(location, "writing"):
            if not stream.closed:
                stream.close()
            if local:
                if durable:
                    _fsync_local(tmp)
                os.replace(tmp, path)
                if durable:
                    _fsync_local(os.path.dirname(path))
            else:
                # HDFS rename does not overwrite: drop the old file first (a brief gap, never a partial file)
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(path)
                fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            if not stream.closed:
                stream.close()
        with contextlib.suppress(Exception):
            os.remove(tmp) if local else fs.delete_file(tmp)
        raise


def write_bytes(location: str, data: bytes, durable: bool = False) -> None:
    """Write ``data`` atomically: readers see the old content or all of the new, never a part.

    Local: temp file beside it (".name.tmp-<pid>-<rand>") then os.replace, parent folders created
    (``durable``: fsynced, see :func:`open_output`). Object stores: one upload, visible all at once.
    """
    with open_output(location, durable) as stream:
        stream.write(data)


def write_text(location: str, text: str) -> None:
    """write_bytes of ``text`` encoded as UTF-8."""
    write_bytes(location, text.encode("utf-8"))


def write_json(location: str, payload: Any) -> None:
    """write_text of ``json.dumps(payload, indent=2, sort_keys=True)`` plus a newline."""
    write_text(location, json.dumps(payload, indent=2, sort_keys=True) + "\n")


# --- deletes and folders --------------------------------------------------------------------------------

def delete(location: str) -> None:
    """Delete the file at ``location``; a missing file is fine."""
    fs, path = filesystem(location)
    with _errors(location, "deleting"):
        if fs is _LOCAL:
            if os.path.isdir(path):
                raise fail(location, None, "is a folder: use delete_dir")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory and _uri.scheme(location) not in OBJECT_STORES:
            raise fail(location, None, "is a folder: use delete_dir")
        if info.type == pafs.FileType.File:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(path)


def delete_dir(location: str) -> None:
    """Delete the folder ``location`` and everything under it; a missing folder is fine.

    Never deletes a filesystem root or a bucket/container: at a bucket root only its content goes.
    """
    fs, path = filesystem(location)
    sch = _uri.scheme(location)
    with _errors(location, "deleting"):
        if fs is _LOCAL:
            if path == os.path.dirname(path):
                raise fail(location, None, "refusing to delete a filesystem root")
            if os.path.isfile(path) or os.path.islink(path):
                raise fail(location, None, "is a file, not a folder: use delete")
            if os.path.isdir(path):
                shutil.rmtree(path)
            return
        if sch == "hdfs" and path.strip("/") == "":
            raise fail(location, None, "refusing to delete a filesystem root")
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return
        if info.type == pafs.FileType.File:
            raise fail(location, None, "is a file, not a folder: use delete")
        with contextlib.suppress(FileNotFoundError):
            if sch in OBJECT_STORES and "/" not in path:
                fs.delete_dir_contents(path)  # bucket root: keep the bucket
            else:
                fs.delete_dir(path)


def mkdirs(location: str) -> None:
    """Create the folder ``location`` and its parents (object stores have no folders: nothing to do)."""
    if _uri.scheme(location) in OBJECT_STORES:
        return
    fs, path = filesystem(location)
    with _errors(location, "creating the folder"):
        if fs is _LOCAL:
            if os.path.exists(path) and not os.path.isdir(path):
                raise fail(location, None, "is a file, not a folder")
            os.makedirs(path, exist_ok=True)
        else:
            fs.create_dir(path, recursive=True)


# --- probe ----------------------------------------------------------------------------------------------

def check_location(location: str, key: str, *, write: bool = True) -> None:
    """Probe ``location`` for ``dlpipe VERB --check`` and job start; raise one StorageError line on failure.

    Lists the location (the nearest existing parent when it does not exist yet) and, with ``write``,
    writes and deletes a marker ("<location>/.dlpipe-probe-<random>" on object stores; inside the nearest
    existing folder on local and HDFS paths, so a check creates no folders).
    Fails within seconds on an unreachable endpoint.
    """
    _uri.check_uri(location, key)
    try:
        if _uri.is_local(location):
            _check_local(location, key, write)
        else:
            _check_remote(location, key, write)
    except StorageError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise fail(location, key, _explain(exc, location=location)) from None


def _check_local(location: str, key: str, write: bool) -> None:
    path = _uri.normalize(location)
    if os.path.exists(path) and not os.path.isdir(path):
        raise fail(location, key, "is a file, not a folder: point it at a folder")
    folder = path
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise fail(location, key, f"{folder} is a file, so no folder can be made below it: choose another path")
    os.listdir(folder)
    if write:
        probe = os.path.join(folder, f".dlpipe-probe-{secrets.token_hex(6)}")
        try:
            with open(probe, "wb") as f:
                f.write(b"dlpipe")
        except OSError as exc:
            why = "read-only filesystem" if exc.errno == errno.EROFS else _explain(exc)
            if isinstance(exc, FileNotFoundError):  # /proc and similar refuse to create files
                why = "files cannot be created there (a special or read-only filesystem)"
            raise fail(location, key, f"not writable: cannot create a file in {folder} ({why})") from None
        os.remove(probe)


def _check_remote(location: str, key: str, write: bool) -> None:
    sch = _uri.scheme(location)
    fs, path = _resolve(location, key, probe=True)
    opts = current_options().resolved()
    try:
        if sch in OBJECT_STORES:
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                what = "bucket" if sch in ("s3", "gs") else "container"
                raise fail(location, key, f"the {what} '{bucket}' does not exist: create it or fix the name")
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            raise fail(location, key, "is a file, not a folder: point it at a folder")
        folder = path
        if info.type == pafs.FileType.NotFound:
            if sch in OBJECT_STORES:
                folder = path.rsplit("/", 1)[0] if "/" in path else path
            else:  # HDFS has real folders: find the nearest existing one
                while fs.get_file_info(folder).type == pafs.FileType.NotFound and folder not in ("/", ""):
                    folder = folder.rsplit("/", 1)[0] or "/"
        fs.get_file_info(pafs.FileSelector(folder, recursive=False, allow_not_found=True))
        if write:
            target = path if sch in OBJECT_STORES else folder
            probe = f"{target.rstrip('/')}/.dlpipe-probe-{secrets.token_hex(6)}"
            with fs.open_output_stream(probe) as stream:
                stream.write(b"dlpipe")
            fs.delete_file(probe)
    except StorageError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise fail(location, key, _explain(exc, opts, location)) from None
