"""The world-size-independent epoch order (issue 32): every record once per epoch whatever the world size
does inside it, and the same records as an uninterrupted run."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray
import pytest

from pipelines.train.elastic_order import (
    EpochOrder,
    Interval,
    Remaining,
    RowSlice,
    after_steps,
    shares,
    split,
    steps_left,
)

SIZES = (7, 3, 10, 1, 6, 9)  # rows per row group: uneven, one of a single row


def digest(order: EpochOrder, positions: Iterable[Interval], row_ids: NDArray[np.int64] | None = None) -> str:
    """A digest of the records at ``positions`` independent of how they were cut (sorted record ids): two
    runs used the same records in an epoch exactly when their digests agree. ``row_ids``: the record id of
    each row of the split in file order (default: the row's index)."""
    offsets = np.concatenate([[0], np.cumsum(order.sizes)]).astype(np.int64)
    ids: list[NDArray[np.int64]] = []
    for interval in positions:
        for piece in order.slices(interval):
            rows = order.rows_of(piece.group)[piece.start:piece.end] + offsets[piece.group]
            ids.append(rows if row_ids is None else row_ids[rows])
    every = np.sort(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
    return hashlib.sha256(every.tobytes()).hexdigest()[:16]


def _used(order: EpochOrder, pieces, per_step: list[int], steps: int) -> list[tuple[int, int]]:
    """The positions the ranks used in ``steps`` steps."""
    before = Remaining(tuple(i for p in pieces for i in p))
    after = set(_positions(after_steps(pieces, per_step, steps).intervals))
    return [(p, p + 1) for p in sorted(set(_positions(before.intervals)) - after)]


def _positions(intervals) -> list[int]:
    return [p for a, b in intervals for p in range(a, b)]


def test_the_order_depends_on_seed_and_epoch_only_and_covers_every_row():
    order = EpochOrder(SIZES, seed=3, epoch=1)
    assert sorted(order.groups) == list(range(len(SIZES))) and order.total == sum(SIZES)
    assert order.groups == EpochOrder(SIZES, 3, 1).groups and order.groups != EpochOrder(SIZES, 3, 2).groups
    rows = [(s.group, r) for s in order.slices((0, order.total)) for r in order.rows_of(s.group)[s.start:s.end]]
    assert sorted(rows) == [(g, r) for g, n in enumerate(SIZES) for r in range(n)]


def test_slices_cut_row_groups_at_the_interval_ends():
    order = EpochOrder((4, 4, 4), seed=0, epoch=0)
    first, second, third = order.groups
    assert order.slices((2, 9)) == [RowSlice(first, 2, 4), RowSlice(second, 0, 4), RowSlice(third, 0, 1)]
    assert order.slices((5, 5)) == []


@pytest.mark.parametrize("global_batch, ranks", [(6, 1), (6, 2), (6, 4), (7, 3), (36, 5), (40, 40)])
def test_split_gives_each_rank_a_contiguous_piece_for_the_same_number_of_steps(global_batch, ranks):
    remaining = Remaining(((0, 10), (14, 30), (31, 36), (40, 83)))
    per_step = shares(global_batch, ranks)
    pieces = split(remaining, per_step)
    assert len(pieces) == ranks and sum(per_step) == global_batch and max(per_step) - min(per_step) <= 1
    assert _positions([i for p in pieces for i in p]) == _positions(remaining.intervals)  # in order, once each
    steps = steps_left(pieces, per_step)
    assert steps == -(-remaining.count // global_batch)
    left = remaining
    for step in range(1, steps + 1):  # every step but the last uses exactly the global batch
        now = after_steps(pieces, per_step, step)
        assert left.count - now.count == (global_batch if step < steps else remaining.count - global_batch * (steps - 1))
        left = now
    assert left.count == 0


@pytest.mark.parametrize("seed", range(8))
def test_every_record_once_per_epoch_however_the_world_size_changes_inside_it(seed):
    rng = np.random.default_rng(seed)
    order = EpochOrder(SIZES, seed=seed, epoch=2)
    global_batch = 7  # divides by none of the world sizes below but 1 and 7
    remaining, used = Remaining.whole(order), []
    while remaining.count:
        per_step = shares(global_batch, int(rng.choice([1, 2, 3, 4, 7])))  # a node lost or back
        pieces = split(remaining, per_step)
        steps = min(steps_left(pieces, per_step), int(rng.integers(1, 4)))
        used += _used(order, pieces, per_step, steps)
        remaining = after_steps(pieces, per_step, steps)
        remaining = Remaining.from_plain(remaining.to_plain())  # through a checkpoint
    assert sorted(p for p, _ in used) == list(range(order.total))
    assert digest(order, used) == digest(order, [(0, order.total)])


def test_the_digest_tells_a_missed_or_repeated_record():
    order = EpochOrder(SIZES, seed=1, epoch=0)
    whole = digest(order, [(0, order.total)])
    assert digest(order, [(0, 10), (10, order.total)]) == whole
    assert digest(order, [(0, 10), (11, order.total)]) != whole
    assert digest(order, [(0, 11), (10, order.total)]) != whole


def test_a_damaged_remaining_list_is_refused():
    with pytest.raises(ValueError, match="sorted and disjoint"):
        Remaining.from_plain([[0, 5], [3, 8]])
    with pytest.raises(ValueError, match="cannot be shared by 0 rank"):
        shares(8, 0)
    with pytest.raises(ValueError, match="at least one row a step"):
        split(Remaining(((0, 4),)), [2, 0])


def test_a_ranks_piece_reads_back_as_the_records_at_its_positions(tmp_path):
    from testkit import write_split

    from pipelines.artifact import Normalizer
    from pipelines.dataset import Normalization
    from pipelines.train.elastic_loader import piece_batches

    identity = Normalizer.from_stats(Normalization("global", [0.0], [1.0]), [3])
    files = write_split(tmp_path, layout=((8, 8, 5), (7, 7), (9,)))  # row x has label x, features [x, x/2, -x]
    order = EpochOrder(tuple(files.sizes), seed=5, epoch=1)
    labels_by_position = np.concatenate([order.rows_of(g) + sum(files.sizes[:g]) for g in order.groups])
    remaining = Remaining(((3, 20), (25, order.total)))
    seen = []
    for piece in split(remaining, shares(12, 3)):
        batches = list(piece_batches(files, order, piece, per_rank=4, normalize=identity))
        assert all(len(b["label"]) == 4 for b in batches[:-1]) and 0 < len(batches[-1]["label"]) <= 4
        got = np.concatenate([b["label"].numpy() for b in batches])
        assert list(got) == [labels_by_position[p] for p in _positions(piece)]
        assert np.array_equal(np.concatenate([b["features"][:, 0].numpy() for b in batches]), got.astype(np.float32))
        seen += list(got)
    assert sorted(seen) == sorted(labels_by_position[p] for p in _positions(remaining.intervals))
