"""The RL run report: the return curve and one table row per iteration."""
from __future__ import annotations

from pathlib import Path

from pipelines.rl.checkpoint import IterationRecord
from pipelines.rl.job import GreedyEvaluation
from pipelines.rl.report import CURVE_FILE, write_rl_report


def _record(i, mean_return):
    return IterationRecord(iteration=i, env_steps=100 * i, episodes=0 if mean_return is None else 2,
                           mean_return=mean_return, mean_length=mean_return, lr=0.001, rollout_s=0.1, update_s=0.1,
                           env_steps_per_s=1000.0, losses={"policy_loss": -0.01, "value_loss": 3.0, "entropy": 0.6})


def test_report_draws_the_curve_and_lists_every_iteration(tmp_path):
    history = [_record(1, None), _record(2, 25.5), _record(3, 80.0)]
    evaluation = GreedyEvaluation(episodes=10, mean_return=120.0, std_return=4.0, mean_length=120.0, seconds=1.0)
    path = write_rl_report(str(tmp_path), "r1", history, evaluation, "CartPole-v1")
    text = Path(path).read_text()
    assert (tmp_path / "report" / CURVE_FILE).stat().st_size > 1000
    assert "mean return **120.0** (std 4.0" in text
    assert "| 1 | 100 | 0 | n/a |" in text and "| 3 | 300 | 2 | 80.0 |" in text
    assert "Total: 300 environment steps in 3 iterations." in text
