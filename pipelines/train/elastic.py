"""One launch's share of an elastic epoch on a rank (issue 32; ``train.num_workers=MIN..MAX``).

An elastic run keeps the mathematics of its config at any world size:

- the epoch's order is global (``pipelines.train.elastic_order``), so what is left of it after a lost
  node is a list of positions (:class:`~pipelines.train.elastic_order.Remaining`, kept in the checkpoint)
  that the next launch, with whatever number of ranks, cuts again: every record is used once per epoch;
- the global batch is ``train.batch_size`` x the maximum world size, whatever the size now: each of
  ``n`` ranks takes its share of it (:func:`~pipelines.train.elastic_order.shares`) and weights its loss
  by ``rows x n / rows of the step`` so the averaged gradient is the mean over the step's rows, as one
  rank with the whole batch would get (:meth:`EpochPlan.weight`);
- a rank whose piece has no row left for the epoch's last, short step still takes part in its
  collectives with one placeholder row at weight 0 (:meth:`EpochPlan.batches`).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pipelines.artifact import Normalizer
from pipelines.dataset import SplitFiles
from pipelines.train import loader
from pipelines.train.elastic_loader import piece_batches
from pipelines.train.elastic_order import EpochOrder, Piece, Remaining, after_steps, shares, split, steps_left

READ_AHEAD_BATCHES = 4  # batches decoded ahead of the step on the loader's thread


def global_batch(batch_size: int, max_workers: int) -> int:
    """Rows of one optimizer step at any world size: the config's per-rank batch at the maximum size."""
    return batch_size * max_workers


def epoch_steps(total_rows: int, batch: int) -> int:
    """Optimizer steps of a whole elastic epoch (the last one may be short): the same at any world size."""
    return -(-total_rows // batch)


@dataclass(frozen=True)
class EpochPlan:
    """What ``ranks`` ranks do with ``remaining`` of epoch ``order.epoch``, ``steps_done`` steps in."""

    order: EpochOrder
    remaining: Remaining
    per_step: list[int]  # rows each rank takes a step
    pieces: list[Piece]  # each rank's positions, in order
    steps_done: int

    @classmethod
    def make(cls, sizes: list[int], seed: int, epoch: int, batch: int, ranks: int,
             remaining: Remaining | None = None, steps_done: int = 0) -> EpochPlan:
        """The plan for a launch of ``ranks`` ranks (``remaining`` None: the whole epoch)."""
        order = EpochOrder(tuple(sizes), seed, epoch)
        left = remaining if remaining is not None else Remaining.whole(order)
        per_step = shares(batch, ranks)
        return cls(order, left, per_step, split(left, per_step), steps_done)

    @property
    def total_steps(self) -> int:
        """The epoch's steps, counting those done before this launch."""
        return self.steps_done + steps_left(self.pieces, self.per_step)

    def rows(self, rank: int, step: int) -> int:
        """Rows ``rank`` uses at the epoch's step ``step`` (0-based; 0 for a rank whose piece ran out)."""
        taken = (step - self.steps_done) * self.per_step[rank]
        return max(0, min(self.per_step[rank], _length(self.pieces[rank]) - taken))

    def weight(self, rank: int, step: int) -> float:
        """The factor on ``rank``'s mean loss at ``step`` that makes the ranks' averaged gradient the
        mean over every row of the step."""
        step_rows = sum(self.rows(r, step) for r in range(len(self.pieces)))
        return self.rows(rank, step) * len(self.pieces) / step_rows

    def left_after(self, step: int) -> Remaining:
        """What a checkpoint after the epoch's step ``step`` (1-based count of steps done) keeps."""
        return after_steps(self.pieces, self.per_step, step - self.steps_done)

    def batches(self, split_files: SplitFiles, rank: int, normalize: Normalizer,
                feature_shape: tuple[int, ...]) -> Iterator[dict[str, torch.Tensor]]:
        """``rank``'s batch for every step left, decoded ahead on a thread of its own; a step it has no
        row for gets a one-row placeholder (its weight is 0)."""
        return loader.in_background(self._batches(split_files, rank, normalize, feature_shape),
                                    READ_AHEAD_BATCHES, f"dlpipe-elastic-loader-{rank}")

    def _batches(self, split_files: SplitFiles, rank: int, normalize: Normalizer,
                 feature_shape: tuple[int, ...]) -> Iterator[dict[str, torch.Tensor]]:
        real = piece_batches(split_files, self.order, self.pieces[rank], self.per_step[rank], normalize)
        placeholder = {"features": torch.zeros(1, *feature_shape), "label": torch.zeros(1, dtype=torch.int64)}
        for step in range(self.steps_done, self.total_steps):
            yield next(real) if self.rows(rank, step) else placeholder


def _length(piece: Piece) -> int:
    return sum(end - start for start, end in piece)
