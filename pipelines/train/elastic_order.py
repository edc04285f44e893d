"""An epoch's sample order that does not depend on the world size, and how ranks share what is left of it.

Elastic training (issue 32) must resume inside an epoch at any world size and still use every training
record exactly once per epoch. So the order is global, fixed by (seed, epoch) alone:

- the split's row groups in a seeded permutation, and the rows of each row group in a permutation seeded
  by (seed, epoch, row group): together one sequence of ``total`` positions (:class:`EpochOrder`);
- what an epoch has still to use is a list of position intervals (:class:`Remaining`); a launch with
  ``n`` ranks cuts it into ``n`` contiguous pieces of equal length (within one row) (:func:`split`);
- at every step each rank takes the next ``per_rank`` positions of its piece, so after ``steps`` steps
  what is left is each piece's tail (:func:`after_steps`): that is what a checkpoint stores, and the next
  launch, with whatever world size, splits it again;
- a rank reads its piece as row-group slices (:meth:`EpochOrder.slices`): every row group it touches is
  read once, the first and last perhaps in part.

The global batch is the same at every world size: :func:`shares` gives each of ``n`` ranks its rows of
it, within one row of the others (``pipelines.train.elastic`` weights the losses by them). Nothing here
reads data: it is arithmetic on positions, tested on its own.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Interval = tuple[int, int]  # [start, end) of positions in the epoch's order


@dataclass(frozen=True)
class RowSlice:
    """Rows ``start:end`` of row group ``group`` in that row group's permuted row order."""
    group: int
    start: int
    end: int


@dataclass(frozen=True)
class EpochOrder:
    """The order of one epoch: row groups permuted by (seed, epoch), rows inside each by (seed, epoch, group)."""
    sizes: tuple[int, ...]  # rows per row group, in the split's file order
    seed: int
    epoch: int
    groups: tuple[int, ...] = field(init=False)  # row-group indexes in this epoch's order
    starts: tuple[int, ...] = field(init=False)  # the first position of each entry of ``groups``

    def __post_init__(self) -> None:
        groups = tuple(int(g) for g in np.random.default_rng([self.seed, self.epoch]).permutation(len(self.sizes)))
        starts = tuple(int(s) for s in np.concatenate([[0], np.cumsum([self.sizes[g] for g in groups])[:-1]])) \
            if groups else ()
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "starts", starts)

    @property
    def total(self) -> int:
        """Positions in the epoch: every row of the split once."""
        return sum(self.sizes)

    def rows_of(self, group: int) -> NDArray[np.int64]:
        """Row group ``group``'s rows in this epoch's order (indexes into the row group)."""
        rng = np.random.default_rng([self.seed, self.epoch, group])
        return rng.permutation(self.sizes[group]).astype(np.int64)

    def slices(self, interval: Interval) -> list[RowSlice]:
        """The row-group slices that hold positions ``interval``, in order."""
        start, end = interval
        out: list[RowSlice] = []
        i = max(0, int(np.searchsorted(self.starts, start, side="right")) - 1)
        while start < end and i < len(self.groups):
            group, first = self.groups[i], self.starts[i]
            last = first + self.sizes[group]
            if last > start:
                out.append(RowSlice(group, start - first, min(end, last) - first))
                start = min(end, last)
            i += 1
        return out


@dataclass(frozen=True)
class Remaining:
    """The positions an epoch has still to use, as sorted disjoint intervals (what a checkpoint keeps)."""
    intervals: tuple[Interval, ...]

    @classmethod
    def whole(cls, order: EpochOrder) -> Remaining:
        """A fresh epoch: every position."""
        return cls(((0, order.total),) if order.total else ())

    @property
    def count(self) -> int:
        """How many positions are left."""
        return sum(end - start for start, end in self.intervals)

    def to_plain(self) -> list[list[int]]:
        """For a checkpoint (JSON)."""
        return [[start, end] for start, end in self.intervals]

    @classmethod
    def from_plain(cls, value: Iterable[Iterable[int]]) -> Remaining:
        """From :meth:`to_plain`; refuses overlapping or unordered intervals (a damaged checkpoint)."""
        intervals = tuple((int(a), int(b)) for a, b in value)
        for (a, b), (c, _) in zip(intervals, intervals[1:]):
            if not a < b <= c:
                raise ValueError(f"remaining positions {intervals}: intervals must be non-empty, sorted and disjoint")
        return cls(intervals)


Piece = tuple[Interval, ...]  # one rank's share of the remaining positions, in order


def shares(global_batch: int, ranks: int) -> list[int]:
    """Rows each of ``ranks`` ranks takes per step so that a step uses ``global_batch`` rows in all
    (within one row of each other when it does not divide: the gradient is then weighted by rows)."""
    if ranks < 1 or global_batch < ranks:
        raise ValueError(f"a global batch of {global_batch} rows cannot be shared by {ranks} rank(s)")
    base, extra = divmod(global_batch, ranks)
    return [base + (1 if r < extra else 0) for r in range(ranks)]


def split(remaining: Remaining, per_step: list[int]) -> list[Piece]:
    """The remaining positions cut into one contiguous piece per rank, rank ``r`` taking ``per_step[r]``
    rows a step: every rank runs the same number of steps, each step uses ``sum(per_step)`` rows (the last
    one of the epoch fewer, shared in the same proportions)."""
    batch = sum(per_step)
    if not per_step or min(per_step) < 1:
        raise ValueError(f"every rank takes at least one row a step, got {per_step}")
    steps = -(-remaining.count // batch)
    tail = remaining.count - batch * (steps - 1) if steps else 0
    # the last step's rows in the ranks' proportions, as near as whole rows allow
    tails = _proportional(tail, per_step) if steps else [0] * len(per_step)
    pieces: list[Piece] = []
    intervals = list(remaining.intervals)
    for rows, last in zip(per_step, tails):
        piece, intervals = _take(intervals, rows * max(steps - 1, 0) + last)
        pieces.append(piece)
    return pieces


def after_steps(pieces: list[Piece], per_step: list[int], steps: int) -> Remaining:
    """What is left once every rank has run ``steps`` steps, rank ``r`` using ``per_step[r]`` rows of its
    piece each (a piece's last step may hold fewer)."""
    left: list[Interval] = []
    for piece, rows in zip(pieces, per_step):
        _, tail = _take(list(piece), steps * rows)
        left.extend(tail)
    return Remaining(tuple(_merged(sorted(left))))


def steps_left(pieces: list[Piece], per_step: list[int]) -> int:
    """Steps until every piece is used up (the same for every rank when the pieces come from :func:`split`)."""
    return max((-(-sum(b - a for a, b in piece) // rows) for piece, rows in zip(pieces, per_step)), default=0)


def _proportional(total: int, weights: list[int]) -> list[int]:
    """``total`` cut in the proportions of ``weights`` (largest remainders), each part at most its weight."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    parts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - parts[i], reverse=True)[:total - sum(parts)]:
        parts[i] += 1
    return parts


def _take(intervals: list[Interval], length: int) -> tuple[Piece, list[Interval]]:
    """The first ``length`` positions of ``intervals``, and the rest."""
    taken: list[Interval] = []
    while length > 0 and intervals:
        start, end = intervals[0]
        used = min(length, end - start)
        taken.append((start, start + used))
        length -= used
        intervals = ([(start + used, end)] if start + used < end else []) + intervals[1:]
    return tuple(taken), intervals


def _merged(intervals: list[Interval]) -> list[Interval]:
    """Sorted intervals with touching ones joined."""
    out: list[Interval] = []
    for start, end in intervals:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def piece_reads(order: EpochOrder, piece: Piece) -> list[RowSlice]:
    """The row-group slices one rank reads for ``piece``, in order (each row group once, unless the piece
    wraps around a cut it made itself)."""
    return [s for interval in piece for s in order.slices(interval)]
