"""A launch's share of an elastic epoch (pipelines.train.elastic.EpochPlan): the loss weights that make
the ranks' averaged gradient the step's mean, the rows of each step, and what a checkpoint keeps."""
from __future__ import annotations

import pytest

from pipelines.train.elastic import EpochPlan, epoch_steps, global_batch

SIZES = [7, 3, 10, 1, 6, 9]  # 36 rows in uneven row groups


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7])
def test_every_step_uses_the_global_batch_and_the_weights_average_to_one(ranks):
    batch = global_batch(batch_size=2, max_workers=4)  # 8 rows a step at any world size
    plan = EpochPlan.make(SIZES, seed=1, epoch=0, batch=batch, ranks=ranks)
    assert plan.total_steps == epoch_steps(36, batch) == 5
    for step in range(plan.total_steps):
        rows = [plan.rows(r, step) for r in range(ranks)]
        assert sum(rows) == (batch if step < 4 else 36 - 4 * batch), (step, rows)
        # the ranks average weight_r x (their rows' loss sum / rows_r): every row of the step then
        # counts 1 / (rows of the step), as in one rank's mean over the whole step
        weights = [plan.weight(r, step) for r in range(ranks)]
        for w, n in zip(weights, rows):
            if n:
                assert w / (ranks * n) == pytest.approx(1 / sum(rows))
        assert sum(weights) / ranks == pytest.approx(1.0)
        assert all(w == 0 for w, n in zip(weights, rows) if n == 0)  # a placeholder step counts nothing


def test_a_relaunch_at_another_size_continues_the_same_step_count_from_what_is_left():
    batch = global_batch(batch_size=3, max_workers=2)  # 6 rows a step
    first = EpochPlan.make(SIZES, seed=4, epoch=2, batch=batch, ranks=2)
    left = first.left_after(3)
    assert left.count == 36 - 3 * batch
    second = EpochPlan.make(SIZES, seed=4, epoch=2, batch=batch, ranks=3, remaining=left, steps_done=3)
    assert second.total_steps == first.total_steps == 6
    assert sum(second.rows(r, 3) for r in range(3)) == batch
    assert second.left_after(6).count == 0


def test_a_rank_with_nothing_left_takes_a_placeholder_at_weight_zero():
    # 3 rows left for 4 ranks: one step, one rank without a row
    plan = EpochPlan.make([3], seed=0, epoch=0, batch=8, ranks=4)
    rows = [plan.rows(r, 0) for r in range(4)]
    assert sorted(rows) == [0, 1, 1, 1]
    assert [plan.weight(r, 0) for r in range(4)] == [n * 4 / 3 for n in rows]
