"""Reading Parquet row groups from a store ahead of their reader.

A reader on an object store pays one round trip per request: the footer of every file it opens and
each row group's column chunks. :class:`ReadAhead` takes the row groups a reader will read, in the
order it will read them, fetches each one's byte range (the column chunks it needs, one request) on
a few threads, ``window`` row groups ahead, and serves the reader's reads from memory. Footers are
fetched once per file and process (:func:`footer`). A read it cannot serve (an order that differs
from the one given) goes to the store as before: slower, never wrong; :attr:`ReadAhead.misses`
counts them.

    ahead = ReadAhead([RowGroupRead(location, 3), ...], columns=["features", "label"])
    with ahead:
        pq.ParquetFile(ahead.open(location)).read_row_group(3, columns=["features", "label"])
"""
from __future__ import annotations

import bisect
import io
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import fs as _fs
from pipelines.storage.uri import StorageError, redact

FOOTER_READ = 64 * 1024  # the first footer request: enough for the footers of dlpipe's files
FETCH_TIMEOUT_S = 300.0  # a fetch that has not finished by then fails the read, naming the file


@dataclass(frozen=True)
class RowGroupRead:
    """One row group a reader will read: its file's location and its index in that file."""
    location: str
    row_group: int


@dataclass(frozen=True)
class Footer:
    """A Parquet file's size, its last bytes (the footer and some before it) and its metadata."""
    size: int
    tail_offset: int
    tail: bytes
    metadata: pq.FileMetaData


_footers: dict[tuple[str, _fs.StorageOptions], Footer] = {}
_footers_lock = threading.Lock()


def footer(location: str) -> Footer:
    """The footer of the Parquet file at ``location``, fetched once per process (at most two requests)."""
    key = (location, _fs.current_options())
    with _footers_lock:
        found = _footers.get(key)
    if found is not None:
        return found
    fs, path = _fs.filesystem(location)
    with _fs._errors(location, "read"):
        source = fs.open_input_file(path)
        size = source.size()
        start = max(0, size - FOOTER_READ)
        tail = source.read_at(size - start, start)
        length = int.from_bytes(tail[-8:-4], "little") + 8  # metadata length + itself + "PAR1"
        if length > len(tail):
            start = max(0, size - length)
            tail = source.read_at(size - start, start)
    metadata = pq.read_metadata(_MemoryFile(size, [(start, tail)]))
    made = Footer(size, start, tail, metadata)
    with _footers_lock:
        return _footers.setdefault(key, made)


def byte_range(meta: pq.FileMetaData, row_group: int, columns: Iterable[str]) -> tuple[int, int]:
    """(offset, length) of the column chunks of ``columns`` in ``row_group``: one contiguous span."""
    group = meta.row_group(row_group)
    wanted = set(columns)
    starts, ends = [], []
    for i in range(group.num_columns):
        chunk = group.column(i)
        if chunk.path_in_schema.split(".")[0] not in wanted:
            continue
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
            start = min(start, chunk.dictionary_page_offset)
        starts.append(start)
        ends.append(start + chunk.total_compressed_size)
    if not starts:
        raise ValueError(f"row group {row_group} has none of the columns {sorted(wanted)}")
    return min(starts), max(ends) - min(starts)


class ReadAhead:
    """Fetches ``reads`` in order, ``window`` ahead on ``threads`` threads, for :meth:`open`'s files."""

    def __init__(self, reads: list[RowGroupRead], columns: Iterable[str], window: int = 8, threads: int = 4) -> None:
        self.columns = list(columns)
        self.window = window
        self.misses = 0  # reads that went to the store: not in the order given, or evicted
        self._reads = reads
        self._spans: list[tuple[str, int, int]] = []  # (location, offset, length) per read
        self._by_file: dict[str, list[tuple[int, int, int]]] = {}  # location -> sorted (offset, end, index)
        for index, read in enumerate(reads):
            offset, length = byte_range(footer(read.location).metadata, read.row_group, self.columns)
            self._spans.append((read.location, offset, length))
            self._by_file.setdefault(read.location, []).append((offset, offset + length, index))
        for spans in self._by_file.values():
            spans.sort()
        self._by_path = {_fs.filesystem(location)[1]: location for location in self._by_file}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dlpipe-readahead")
        self._fetched: dict[int, Future[bytes]] = {}
        self._submitted = 0
        self._reached = -1  # the furthest read the reader has touched
        self._lock = threading.Lock()
        self._sources: dict[str, pa.NativeFile] = {}
        self._submit_up_to(window)

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop fetching; drop what was fetched."""
        with self._lock:
            for future in self._fetched.values():
                future.cancel()
            self._fetched.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def open(self, location: str) -> io.RawIOBase:
        """A read-only file of ``location`` served from the footer and the fetched row groups."""
        return _AheadFile(self, location, footer(location))

    def open_path(self, path: str) -> io.RawIOBase | None:
        """:meth:`open` by the store's own path ("bucket/key"), None for a file it does not read."""
        location = self._by_path.get(path)
        return self.open(location) if location is not None else None

    # --- fetching -------------------------------------------------------------------------------

    def _source(self, location: str) -> pa.NativeFile:
        with self._lock:
            source = self._sources.get(location)
        if source is None:
            fs, path = _fs.filesystem(location)
            source = fs.open_input_file(path)  # read_at is safe from several threads
            with self._lock:
                source = self._sources.setdefault(location, source)
        return source

    def _fetch(self, index: int) -> bytes:
        location, offset, length = self._spans[index]
        with _fs._errors(location, "read"):
            data: bytes = self._source(location).read_at(length, offset)  # pyarrow is untyped
            return data

    def _submit_up_to(self, end: int) -> None:
        with self._lock:
            while self._submitted < min(end, len(self._reads)):
                self._fetched[self._submitted] = self._pool.submit(self._fetch, self._submitted)
                self._submitted += 1

    # --- serving --------------------------------------------------------------------------------

    def serve(self, location: str, position: int, size: int) -> bytes | None:
        """``size`` bytes at ``position`` of ``location`` if a fetched row group holds them, else None."""
        spans = self._by_file.get(location, [])
        i = bisect.bisect_right(spans, (position, float("inf"), 0)) - 1
        if i < 0 or position + size > spans[i][1]:
            return None
        start, _, index = spans[i]
        with self._lock:
            future = self._fetched.get(index)
            if index > self._reached:
                self._reached = index
                # the reader moved on: what lies well behind it will not be read again this pass
                for old in [k for k in self._fetched if k < index - 2]:
                    del self._fetched[old]
        if future is None:
            return None
        self._submit_up_to(index + 1 + self.window)
        try:
            data = future.result(timeout=FETCH_TIMEOUT_S)
        except TimeoutError:
            raise StorageError(f"reading row group {self._reads[index].row_group} of {redact(location)} took "
                               f"more than {FETCH_TIMEOUT_S:g} s: is the store answering?") from None
        return data[position - start:position - start + size]


class _MemoryFile(io.RawIOBase):
    """A file of ``size`` bytes of which only some spans are known (enough to parse a footer)."""

    def __init__(self, size: int, spans: list[tuple[int, bytes]]) -> None:
        self._size, self._spans, self._pos = size, spans, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos

    def _known(self, position: int, size: int) -> bytes | None:
        for start, data in self._spans:
            if start <= position and position + size <= start + len(data):
                return data[position - start:position - start + size]
        return None

    def _unknown(self, position: int, size: int) -> bytes:
        raise OSError(f"bytes {position}..{position + size} are not held in memory")

    def read(self, size: int = -1) -> bytes:
        size = self._size - self._pos if size is None or size < 0 else min(size, self._size - self._pos)
        data = self._known(self._pos, size)
        if data is None:
            data = self._unknown(self._pos, size)
        self._pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]  # io's stub: any Buffer
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _AheadFile(_MemoryFile):
    """``location`` as its reader sees it: footer bytes in memory, row groups from the read-ahead,
    anything else read from the store (and counted as a miss)."""

    def __init__(self, ahead: ReadAhead, location: str, foot: Footer) -> None:
        super().__init__(foot.size, [(foot.tail_offset, foot.tail)])
        self._ahead, self._location = ahead, location

    def _unknown(self, position: int, size: int) -> bytes:
        data = self._ahead.serve(self._location, position, size)
        if data is not None:
            return data
        with self._ahead._lock:
            self._ahead.misses += 1
        with _fs._errors(self._location, "read"):
            missed: bytes = self._ahead._source(self._location).read_at(size, position)  # pyarrow is untyped
            return missed
