"""Rank-side data loading: shards of the ETL's Parquet into fixed-size torch batches.

Two readers, one order (``train.loader``, :data:`LOADERS`): ``petastorm`` reads through Petastorm's
``make_batch_reader``; ``arrow`` reads the same row groups in the same order (:func:`petastorm_order`)
with pyarrow alone and never imports Petastorm. Both give the same batches.

Equal work per rank: a rank's shard is the row groups whose index ``i % size == rank`` (Petastorm's
own rule; see ``pipelines.dataset``). Shards can differ in size, so every rank runs
``dataset.steps_per_epoch(...)`` steps, computed from Parquet footers alike on all ranks; a rank
whose shard runs out early starts another shuffled pass over it. An epoch thus covers the whole
split up to at most one batch per rank, and no collective waits for a rank that stopped.
"""
from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray

from pipelines import choices, dataset, storage
from pipelines.artifact import Normalizer
from pipelines.dataset import SplitFiles
from pipelines.device import pin_batch

if TYPE_CHECKING:
    from pipelines.storage import RowGroupRead

READ_AHEAD_ROW_GROUPS = 8  # row groups fetched ahead of the reader on an object store (~4 MiB each)
PREFETCH_BATCHES = 4  # batches made ahead of the training step (epoch_batches' queue)
DECODE_AHEAD_ROW_GROUPS = 2  # row groups the arrow reader's thread decodes ahead of the batching
STOP_WAIT_S = 10.0  # how long closing a background iterator waits for its thread (it may be in a read)
# Petastorm 0.12 on pyarrow 14 warns about its own use of legacy pyarrow APIs on every reader.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"petastorm\.")
Item = TypeVar("Item")
Arrays = tuple[NDArray[np.float32], NDArray[np.int64]]  # a row group's (features (rows, F), labels (rows,))


class _ArrowArrays:
    """Stands in for Petastorm's batch results reader: each row group's Arrow table straight to
    ``(features (rows, F) float32, labels (rows,) int64)``. Petastorm's own goes through pandas, one
    Python object per row, and stacks them again; here the list column's one flat value buffer is
    reshaped, no per-row work."""

    batched_output = True

    def read_next(self, workers_pool: Any, schema: Any, ngram: Any) -> Arrays:
        from petastorm.workers_pool import EmptyResultError

        try:
            table = workers_pool.get_results()
        except EmptyResultError:
            raise StopIteration from None
        return dataset.table_arrays(table)


COLUMNS = ["features", "label"]  # what the loader reads of the dataset format (pipelines.dataset)


def petastorm_order(pieces: int, shard: int | None, shards: int | None, seed: int | None,
                    shuffle: bool) -> list[int]:
    """The row-group pieces Petastorm 0.12.1's reader reads, in the order it reads them, for
    ``make_batch_reader(cur_shard=shard, shard_count=shards, seed=seed, shuffle_row_groups=shuffle)``
    with one reader thread: ``Reader._partition_row_groups`` shuffles the piece indexes with
    ``random.Random(seed)`` and keeps those with ``index % shards == shard``; its ventilator then
    shuffles them with ``numpy.random.RandomState(seed)``. Read-ahead fetches in this order;
    tests/unit/storage/test_s3.py (``test_the_loader_reads_row_groups_ahead_in_petastorms_own_order``)
    checks it against the reader, so a Petastorm that orders
    otherwise fails there (and here only costs read-ahead misses)."""
    indexes = list(range(pieces))
    if shards:
        if seed is not None:
            random.Random(seed).shuffle(indexes)
        indexes = [i for i in indexes if i % shards == shard]
    if shuffle:
        np.random.RandomState(seed).shuffle(indexes)
    return indexes


@contextlib.contextmanager
def _reader(split: SplitFiles, *, shard: int | None = None, shards: int | None = None, seed: int | None = None,
            shuffle: bool = False, workers: int = 1) -> Iterator[Any]:
    """Petastorm's batch reader of a split's files (the dataset format's columns), yielding
    :func:`dataset.table_arrays`. Files on an object store are read through ``pipelines.storage``
    (Petastorm's own remote filesystems fail on the pinned pyarrow: ``storage.petastorm_filesystem``),
    their row groups fetched ahead in the reader's order (``storage.ReadAhead``)."""
    from petastorm import make_batch_reader

    urls = [storage.petastorm_url(f) for f in split.files]
    options: dict[str, Any] = dict(num_epochs=1, shuffle_row_groups=shuffle, shuffle_rows=False, seed=seed,
                                   workers_count=workers, reader_pool_type="thread")
    if shards:
        options.update(cur_shard=shard, shard_count=shards)
    with contextlib.ExitStack() as stack:
        filesystem = None
        if not storage.is_local(split.files[0]):
            pieces = [storage.RowGroupRead(f, g) for f, groups in zip(split.files, split.row_groups)
                      for g in range(len(groups))]
            order = petastorm_order(len(pieces), shard, shards, seed, shuffle)
            # with several reader threads the order interleaves: the window covers it
            ahead = stack.enter_context(storage.ReadAhead([pieces[i] for i in order], COLUMNS,
                                                          window=READ_AHEAD_ROW_GROUPS + workers))
            filesystem = storage.petastorm_filesystem(split.files[0], ahead)
        reader = stack.enter_context(make_batch_reader(urls, schema_fields=COLUMNS, filesystem=filesystem, **options))
        reader._results_queue_reader = _ArrowArrays()  # the one private hook: how results become arrays
        yield reader


@contextlib.contextmanager
def _arrow_reader(split: SplitFiles, *, shard: int | None = None, shards: int | None = None, seed: int | None = None,
                  shuffle: bool = False, workers: int = 1) -> Iterator[Iterator[Arrays]]:
    """The row groups :func:`_reader` reads for the same arguments, in its order (:func:`petastorm_order`),
    read by pyarrow alone (``ParquetFile.read_row_group``; Petastorm is never imported), yielding
    :func:`dataset.table_arrays`. Files on an object store are served by ``storage.ReadAhead`` in that
    order. ``workers`` is unused: one decoding thread keeps the order."""
    pieces = [storage.RowGroupRead(f, g) for f, groups in zip(split.files, split.row_groups)
              for g in range(len(groups))]
    if shards and len(pieces) < shards:  # Petastorm's NoDataAvailableError, with the fix
        raise dataset.DatasetError(f"the split has {len(pieces)} row groups, fewer than the {shards} shards asked "
                                   "for: lower train.num_workers, or re-run the ETL with smaller row groups")
    reads = [pieces[i] for i in petastorm_order(len(pieces), shard, shards, seed, shuffle)]
    with contextlib.ExitStack() as stack:
        opener: Callable[[str], Any]
        if split.files and not storage.is_local(split.files[0]):
            opener = stack.enter_context(storage.ReadAhead(reads, COLUMNS, window=READ_AHEAD_ROW_GROUPS)).open
        else:
            def opener(location: str) -> Any:
                return stack.enter_context(storage.open_input(location))
        # Decoding runs on a thread of its own, as Petastorm's reader thread does, so it overlaps the
        # batching and normalizing of the row group before (pyarrow decodes without the GIL).
        rows = in_background(_row_groups(reads, opener), DECODE_AHEAD_ROW_GROUPS, "dlpipe-arrow-reader")
        try:
            yield rows
        finally:
            rows.close()  # the thread stops before the files it reads are closed


def _row_groups(reads: list[RowGroupRead], open_file: Callable[[str], Any]) -> Iterator[Arrays]:
    """Each of ``reads`` as arrays, every file opened (and its footer parsed) once."""
    files: dict[str, pq.ParquetFile] = {}
    for read in reads:
        file = files.get(read.location)
        if file is None:
            file = files[read.location] = pq.ParquetFile(open_file(read.location))
        table = file.read_row_group(read.row_group, columns=COLUMNS)
        if table.num_rows:  # Petastorm publishes no empty row group, so neither is counted here
            yield dataset.table_arrays(table)


Reader = Callable[..., AbstractContextManager[Iterable[Arrays]]]
LOADERS: dict[str, Reader] = {"petastorm": _reader, "arrow": _arrow_reader}  # train.loader -> its reader
choices.check_registry("train.loader", choices.LOADER_NAMES, tuple(LOADERS))


def _loader(name: str) -> Reader:
    """The reader of ``train.loader`` ``name`` (``auto`` resolved: :func:`choices.resolve_loader`)."""
    name = choices.resolve_loader(name)
    if name not in LOADERS:
        raise ValueError(f"train.loader={name!r}: not one of {', '.join(LOADERS)}")
    return LOADERS[name]


def _shard_passes(split: SplitFiles, rank: int, size: int, seed: int, workers: int,
                  loader: str = choices.AUTO_LOADER) -> Iterator[Arrays]:
    """Endless shuffled passes over one shard; each pass has its own seed (so a new order).

    The reader (``loader``, one of :data:`LOADERS`) shuffles the row groups; the rows inside each are
    shuffled here by a NumPy permutation seeded by (seed, pass, row group), which is reproducible and
    much cheaper than Petastorm's ``shuffle_rows`` (the fancy index is also the one copy the batch needs).
    """
    read = _loader(loader)
    pass_no = 0
    while True:
        rows = 0
        try:
            with read(split, shard=rank, shards=size, seed=seed * 7919 + pass_no, shuffle=True,
                      workers=workers) as reader:
                for group_no, (feats, labels) in enumerate(reader):
                    rows += len(labels)
                    order = np.random.default_rng([seed, pass_no, group_no]).permutation(len(labels))
                    yield feats[order], labels[order]
        except (OSError, pa.ArrowException) as e:
            raise damaged_file_error(split, e) from e
        if not rows:  # another pass would read nothing again, forever
            raise dataset.DatasetError(f"rank {rank} of {size}: its shard of the split holds no rows")
        pass_no += 1


def damaged_file_error(split: SplitFiles, error: Exception) -> Exception:
    """A :class:`~pipelines.dataset.DatasetError` naming the split's first file whose Parquet footer
    does not read (Petastorm's own error names none), or ``error`` itself when every footer reads."""
    for location in split.files:
        try:
            with storage.open_input(location) as file:
                pq.read_metadata(file)
        except (OSError, pa.ArrowException, storage.StorageError) as bad:
            return dataset.DatasetError(
                f"{location}: not a readable Parquet file ({type(bad).__name__}: {str(bad).splitlines()[0]}): "
                "this dataset version is damaged; rebuild it (dlpipe etl with etl.mode=full) or restore the file")
    return error


@dataclass(frozen=True)
class BatchOrder:
    """Which batches of a shard :func:`epoch_batches` yields: its reproducible order is fixed by
    ``seed`` (with the shard), cut into ``batch_size`` rows; of the first ``steps`` batches, the
    first ``skip`` are passed over (resuming inside an epoch)."""

    batch_size: int
    steps: int
    seed: int
    skip: int = 0


def epoch_batches(split: SplitFiles, order: BatchOrder, *, rank: int, size: int, normalize: Normalizer,
                  loader: str = choices.AUTO_LOADER, workers: int = 1,
                  pin: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Exactly ``order.steps - order.skip`` batches of ``order.batch_size`` rows from this rank's
    shard, read ahead in a thread (``loader``: which reader, :data:`LOADERS`; the batches are the same).

    The rows' order depends only on (``order.seed``, rank, size): one producer thread keeps it
    reproducible, and ``order.skip`` drops the first batches of that order unnormalized (to resume inside an epoch).
    ``pin`` (the rank trains on a GPU): batches come in pinned memory, pinned in the read-ahead
    thread, so the rank's copy to the GPU is asynchronous.
    """
    batches = _batches(split, order, rank=rank, size=size, normalize=normalize, loader=loader, workers=workers)
    if pin:
        batches = (pin_batch(batch) for batch in batches)
    return in_background(batches, PREFETCH_BATCHES, f"dlpipe-loader-rank{rank}")


def _batches(split: SplitFiles, order: BatchOrder, *, rank: int, size: int, normalize: Normalizer, loader: str,
             workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`epoch_batches`' batches, made where they are asked for."""
    made = 0
    carry_f = np.zeros((0, 0), np.float32)
    carry_l = np.zeros(0, np.int64)
    for feats, labels in _shard_passes(split, rank, size, order.seed, workers, loader):
        if len(carry_l):  # only the < batch_size leftover is copied, never the whole chunk again
            feats, labels = np.concatenate([carry_f, feats]), np.concatenate([carry_l, labels])
        start = 0
        while len(labels) - start >= order.batch_size and made < order.steps:
            end = start + order.batch_size
            if made >= order.skip:
                yield {"features": normalize(feats[start:end]), "label": torch.from_numpy(labels[start:end])}
            start, made = end, made + 1
        carry_f, carry_l = feats[start:], labels[start:]
        if made >= order.steps:
            return


def in_background(items: Iterator[Item], depth: int, name: str) -> Generator[Item, None, None]:
    """``items`` made on a thread of its own (named ``name``), up to ``depth`` ahead of the consumer, in
    order; what making them raises is raised here. Closing the returned iterator (or leaving it) stops the
    thread at its next item, closes ``items`` there and waits up to ``STOP_WAIT_S`` for it."""
    out: queue.Queue[Item | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    break
                _put(out, item, stop)
            _put(out, None, stop)  # the last item is out
        except BaseException as e:  # noqa: BLE001 - whatever making the items raised is surfaced in the consumer
            _put(out, e, stop)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's own clean-up (its readers' files) runs on the thread that ran it

    thread = threading.Thread(target=produce, name=name, daemon=True)
    return _consume(out, stop, thread)


def _consume(out: queue.Queue[Item | BaseException | None], stop: threading.Event,
             thread: threading.Thread) -> Generator[Item, None, None]:
    """The consumer side of :func:`in_background`: starts ``thread`` on the first item asked for."""
    thread.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(STOP_WAIT_S)


def _put(out: queue.Queue[Item], item: Item, stop: threading.Event) -> None:
    """Block until the consumer takes ``item``, unless it has stopped listening."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def read_all(split: SplitFiles, *, rank: int, size: int, batch_size: int, normalize: Normalizer,
             loader: str = choices.AUTO_LOADER) -> Iterator[dict[str, torch.Tensor]]:
    """One ordered pass over this rank's part of a split (for validation): every row once overall.

    With fewer row groups than ranks, rank 0 reads everything and the others nothing.
    """
    sharded = len(split.sizes) >= size
    if (not sharded and rank != 0) or not split.files:
        return
    read = _loader(loader)
    try:
        with read(split, shard=rank if sharded else None, shards=size if sharded else None) as reader:
            for feats, labels in reader:
                # Arrow's buffers are read-only; torch wants to own writable ones
                feats, labels = feats.copy(), labels.copy()
                for start in range(0, len(labels), batch_size):
                    yield {"features": normalize(feats[start:start + batch_size]),
                           "label": torch.from_numpy(labels[start:start + batch_size])}
    except (OSError, pa.ArrowException) as e:
        raise damaged_file_error(split, e) from e


class Stopwatch:
    """Accumulates time spent waiting for data vs. total step time."""

    def __init__(self) -> None:
        self.wait = 0.0
        self.started = time.perf_counter()

    def timed_next(self, it: Iterator[Item]) -> Item | None:
        t0 = time.perf_counter()
        item = next(it, None)
        self.wait += time.perf_counter() - t0
        return item

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
