"""dlpipe's storage layer: every read, write, listing, existence check and delete of the work folder and
remote sources, for local paths, file://, s3://, gs://, hdfs://, abfs:// and az:// (see fs.py and uri.py).

The URI helpers import nothing heavy; the filesystem names load pyarrow on first use (PEP 562), so config
validation can use ``pipelines.storage`` without pulling in pyarrow.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipelines.storage.uri import (
    StorageError,
    check_uri,
    holds_credentials,
    is_local,
    is_uri,
    join,
    name,
    normalize,
    parent,
    redact,
    relative,
    scheme,
    uri_problem,
)

# Written out, not built from the tuples below: mypy skips `*` entries of __all__ and exports no name
# outside it (no_implicit_reexport). tests/unit/test_typecheck.py checks that the two lists agree.
__all__ = ["StorageError", "check_uri", "holds_credentials", "is_local", "is_uri", "join", "name", "normalize",
           "parent", "redact", "relative", "scheme", "uri_problem",
           # fs.py
           "FileEntry", "StorageOptions", "check_location", "current_options", "delete", "delete_dir", "exists",
           "filesystem", "is_dir", "is_file", "list_dirs", "list_files", "mkdirs", "open_input", "open_output",
           "mark_worker_process", "read_bytes", "read_text", "set_driver_options", "using_options", "write_bytes",
           "write_json", "write_text",
           # petastorm_fs.py, readahead.py, conditional.py
           "petastorm_filesystem", "petastorm_url", "ReadAhead", "RowGroupRead", "WriteConflict", "create_if_absent",
           "fenced", "fencing", "read_versioned", "replace_if_version"]

# which module loads each lazy name on first use
_FS_NAMES = ("FileEntry", "StorageOptions", "check_location", "current_options", "delete", "delete_dir", "exists",
             "filesystem", "is_dir", "is_file", "list_dirs", "list_files", "mkdirs", "open_input", "open_output",
             "mark_worker_process", "read_bytes", "read_text", "set_driver_options", "using_options", "write_bytes",
             "write_json", "write_text")
_PETASTORM_NAMES = ("petastorm_filesystem", "petastorm_url")
_READAHEAD_NAMES = ("ReadAhead", "RowGroupRead")
_CONDITIONAL_NAMES = ("WriteConflict", "create_if_absent", "fenced", "fencing", "read_versioned", "replace_if_version")

if TYPE_CHECKING:
    from pipelines.storage.conditional import (
        WriteConflict,
        create_if_absent,
        fenced,
        fencing,
        read_versioned,
        replace_if_version,
    )
    from pipelines.storage.fs import (
        FileEntry,
        StorageOptions,
        check_location,
        current_options,
        delete,
        delete_dir,
        exists,
        filesystem,
        is_dir,
        is_file,
        list_dirs,
        list_files,
        mark_worker_process,
        mkdirs,
        open_input,
        open_output,
        read_bytes,
        read_text,
        set_driver_options,
        using_options,
        write_bytes,
        write_json,
        write_text,
    )
    from pipelines.storage.petastorm_fs import petastorm_filesystem, petastorm_url
    from pipelines.storage.readahead import ReadAhead, RowGroupRead


def __getattr__(attr: str) -> Any:
    if attr in _FS_NAMES:
        return getattr(importlib.import_module("pipelines.storage.fs"), attr)
    if attr in _PETASTORM_NAMES:
        return getattr(importlib.import_module("pipelines.storage.petastorm_fs"), attr)
    if attr in _CONDITIONAL_NAMES:
        return getattr(importlib.import_module("pipelines.storage.conditional"), attr)
    if attr in _READAHEAD_NAMES:
        return getattr(importlib.import_module("pipelines.storage.readahead"), attr)
    raise AttributeError(f"module 'pipelines.storage' has no attribute {attr!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
