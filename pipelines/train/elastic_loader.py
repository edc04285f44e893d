"""A rank's share of an elastic epoch as torch batches (issue 32; ``pipelines.train.elastic_order`` says
which positions are its). Reads with pyarrow alone, like ``train.loader=arrow``, through the read-ahead on
object stores."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray

from pipelines import dataset, storage
from pipelines.artifact import Normalizer
from pipelines.dataset import SplitFiles
from pipelines.train.elastic_order import EpochOrder, Piece, piece_reads
from pipelines.train.loader import COLUMNS, READ_AHEAD_ROW_GROUPS

Arrays = tuple[NDArray[np.float32], NDArray[np.int64]]


def piece_rows(split: SplitFiles, order: EpochOrder, piece: Piece) -> Iterator[Arrays]:
    """The records at ``piece``'s positions, in the epoch's order, one chunk per row-group slice."""
    where = [storage.RowGroupRead(f, g) for f, groups in zip(split.files, split.row_groups) for g in range(len(groups))]
    reads = piece_reads(order, piece)
    with contextlib.ExitStack() as stack:
        if split.files and not storage.is_local(split.files[0]):
            ahead = stack.enter_context(storage.ReadAhead([where[r.group] for r in reads], COLUMNS,
                                                          window=READ_AHEAD_ROW_GROUPS))
            def opener(location: str) -> object:
                return ahead.open(location)
        else:
            def opener(location: str) -> object:
                return stack.enter_context(storage.open_input(location))
        files: dict[str, pq.ParquetFile] = {}
        for read in reads:
            location, group = where[read.group].location, where[read.group].row_group
            if location not in files:
                files[location] = pq.ParquetFile(opener(location))
            feats, labels = dataset.table_arrays(files[location].read_row_group(group, columns=COLUMNS))
            rows = order.rows_of(read.group)[read.start:read.end]
            yield feats[rows], labels[rows]


def piece_batches(split: SplitFiles, order: EpochOrder, piece: Piece, per_rank: int,
                  normalize: Normalizer) -> Iterator[dict[str, torch.Tensor]]:
    """``piece``'s records as batches of ``per_rank`` rows (the last one shorter when the piece does not divide)."""
    carry_f, carry_l = np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    for feats, labels in piece_rows(split, order, piece):
        if len(carry_l):
            feats, labels = np.concatenate([carry_f, feats]), np.concatenate([carry_l, labels])
        full = len(labels) // per_rank * per_rank
        for start in range(0, full, per_rank):
            yield {"features": normalize(feats[start:start + per_rank]),
                   "label": torch.from_numpy(labels[start:start + per_rank])}
        carry_f, carry_l = feats[full:], labels[full:]
    if len(carry_l):
        yield {"features": normalize(carry_f), "label": torch.from_numpy(carry_l)}
