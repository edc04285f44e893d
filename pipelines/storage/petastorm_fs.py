"""The legacy-filesystem adapter Petastorm 0.12.1 needs to read from any store dlpipe supports.

Petastorm builds a legacy ``pq.ParquetDataset(..., validate_schema=False)``; with pyarrow 14 that works only for a
legacy ``pyarrow.filesystem.FileSystem`` (a ``pyarrow.fs`` filesystem selects the new Dataset API, which rejects
``validate_schema``). The adapter below is such a legacy filesystem delegating to the pyarrow.fs one.

Usage::

    reader = make_batch_reader(petastorm_url(loc), filesystem=petastorm_filesystem(loc), ...)
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs
from pyarrow import filesystem as legacyfs

from pipelines.storage import fs as _fs
from pipelines.storage import uri as _uri
from pipelines.storage.readahead import ReadAhead

# fsspec implementations Petastorm imports only to strip "s3://" from URLs (see _let_fsspec_strip)
_FSSPEC_PACKAGES = {"s3": "s3fs", "gs": "gcsfs"}


class PetastormFileSystem(legacyfs.FileSystem):
    """Legacy pyarrow filesystem over the pyarrow.fs filesystem of one store.

    Paths are the store's own ("bucket/key", "/local/path", "/hdfs/path"), as Petastorm derives them from URLs.
    Pickles as (location, options) and rebuilds its filesystem where it is unpickled (Petastorm's process pool),
    so no network client is ever pickled.
    """

    def __init__(self, location: str, options: _fs.StorageOptions, read_ahead: ReadAhead | None = None):
        self._location = location
        self._options = options
        self._fs: pafs.FileSystem | None = None
        self._ahead = read_ahead  # serves the files it reads ahead (this process only: not pickled)

    def __reduce__(self) -> tuple[type[PetastormFileSystem], tuple[str, _fs.StorageOptions]]:
        return (PetastormFileSystem, (self._location, self._options))

    @property
    def fs(self) -> pafs.FileSystem:
        """The delegate pyarrow.fs filesystem (built on first use in this process)."""
        if self._fs is None:
            self._fs = _fs._resolve(self._location, options=self._options)[0]
        return self._fs

    def _type(self, path: str) -> pafs.FileType:
        return self.fs.get_file_info(_strip(path)).type

    # pyarrow is untyped: each comparison's bool is named before it is returned
    def exists(self, path: str) -> bool:
        found: bool = self._type(path) != pafs.FileType.NotFound
        return found

    def isdir(self, path: str) -> bool:
        folder: bool = self._type(path) == pafs.FileType.Directory
        return folder

    def isfile(self, path: str) -> bool:
        file: bool = self._type(path) == pafs.FileType.File
        return file

    def _isfilestore(self) -> bool:
        # legacy writers create folders first only on stores that have them
        return _uri.scheme(self._location) not in _uri.OBJECT_STORES

    def ls(self, path: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(_strip(path), recursive=False))
        return sorted(info.path for info in infos)

    def walk(self, path: str) -> Iterator[tuple[str, list[str], list[str]]]:
        """Top-down like os.walk: (folder, child folder names, file names); one listing per folder."""
        top = _strip(path).rstrip("/") or "/"
        infos = self.fs.get_file_info(pafs.FileSelector(top, recursive=False))
        dirs = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
        files = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
        yield top, dirs, files
        for child in dirs:
            yield from self.walk(f"{top.rstrip('/')}/{child}")

    def open(self, path: str, mode: str = "rb") -> Any:  # a pyarrow file (untyped): Petastorm reads it as a stream
        if "r" in mode:
            ahead = self._ahead.open_path(_strip(path)) if self._ahead is not None else None
            # random access: Parquet footers and row groups
            return ahead if ahead is not None else self.fs.open_input_file(_strip(path))
        if "w" in mode:
            return self.fs.open_output_stream(_strip(path))
        raise ValueError(f"mode {mode!r} is not supported (only 'rb' and 'wb')")

    def stat(self, path: str) -> dict[str, Any]:
        info = self.fs.get_file_info(_strip(path))
        return {"size": info.size, "kind": "directory" if info.type == pafs.FileType.Directory else "file"}

    def mkdir(self, path: str, create_parents: bool = True) -> None:
        if self._isfilestore():
            self.fs.create_dir(_strip(path), recursive=create_parents)

    def delete(self, path: str, recursive: bool = False) -> None:
        if self.isdir(path):
            if not recursive:
                raise OSError(f"{path} is a folder: pass recursive=True")
            self.fs.delete_dir(_strip(path))
        else:
            self.fs.delete_file(_strip(path))

    rm = delete


def _strip(path: str) -> str:
    """A store path from what legacy pyarrow/Petastorm hand us (a full URI is reduced to its path)."""
    path = str(path)
    if _uri.is_uri(path):
        parts = _uri.split(path)
        return parts.path if parts.scheme in ("file", "hdfs") else _uri.bucket_of(parts) + parts.path
    return path


def _let_fsspec_strip(scheme: str) -> None:
    """Petastorm turns "s3://b/k" into the path "b/k" with fsspec.core.strip_protocol, which imports s3fs
    (gcsfs for gs://) for that alone. dlpipe reads through pyarrow, so when the package is absent, register a
    class that only strips the protocol; creating a filesystem from it still fails as before ("Install s3fs")."""
    package = _FSSPEC_PACKAGES.get(scheme)
    if package is None or importlib.util.find_spec(package) is not None:
        return
    import fsspec
    from fsspec.registry import known_implementations, register_implementation, registry

    if scheme in registry:
        return
    message = known_implementations.get(scheme, {}).get("err", f"Install {package} to use {scheme}:// with fsspec")

    class PathOnlyFileSystem(fsspec.AbstractFileSystem):
        protocol = (scheme,)

        def __init__(self, *args: object, **kwargs: object) -> None:
            raise ImportError(message)

    register_implementation(scheme, PathOnlyFileSystem, clobber=False)


def petastorm_filesystem(location: str, read_ahead: ReadAhead | None = None) -> legacyfs.FileSystem:
    """The legacy filesystem to pass as ``make_batch_reader(..., filesystem=...)`` for the store of ``location``;
    ``read_ahead`` serves the files it reads ahead (``pipelines.storage.readahead``)."""
    _uri.check_uri(location, "")
    options = _fs.current_options().resolved()
    adapter = PetastormFileSystem(_uri.normalize(location), options, read_ahead)
    _ = adapter.fs  # fail here, with a clear StorageError, rather than inside Petastorm
    _let_fsspec_strip(_uri.scheme(location))
    return adapter


def petastorm_url(location: str) -> str:
    """The URL to pass to ``make_batch_reader``: "file:///abs/path" for local paths, the canonical URI otherwise."""
    _uri.check_uri(location, "")
    if _uri.is_local(location):
        return "file://" + _uri.normalize(location)
    _let_fsspec_strip(_uri.scheme(location))
    return _uri.normalize(location)
