"""The RL run report: the return curve (PNG) and ``report.md`` with the evaluation and the last
iteration (through ``pipelines.storage``); and the console's line per iteration."""
from __future__ import annotations

import sys
from typing import Any, TextIO

from pipelines import storage
from pipelines.report import png_bytes, pyplot
from pipelines.rl.checkpoint import IterationRecord
from pipelines.runfolder import RunFolder

CURVE_FILE = "return_curve.png"


def plot_return_curve(history: list[IterationRecord], env_id: str, greedy_return: float | None = None) -> bytes:
    """Mean return of the episodes that ended in each iteration's rollouts against environment
    steps, and the final greedy evaluation's mean return as a dashed line."""
    plt = pyplot()
    points = [(h.env_steps, h.mean_return) for h in history if h.mean_return is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot(*zip(*points), marker="o", markersize=3, label="rollouts (sampled actions, whole episodes)")
    if greedy_return is not None:
        ax.axhline(greedy_return, color="tab:green", linestyle="--",
                   label=f"final greedy evaluation: {greedy_return:.1f}")
    ax.legend(loc="lower right")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean episode return")
    ax.set_title(env_id)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def write_rl_report(run_dir: str, run_id: str, history: list[IterationRecord], evaluation: Any, env_id: str) -> str:
    """``<run>/report/report.md`` and the return curve beside it (the page last); the report's location.
    ``evaluation``: the run's ``pipelines.rl.job.GreedyEvaluation``."""
    folder = RunFolder(run_dir).report
    storage.write_bytes(storage.join(folder, CURVE_FILE), plot_return_curve(history, env_id, evaluation.mean_return))
    lines = [f"# RL run {run_id}: {env_id}", "",
             f"Greedy evaluation, {evaluation.episodes} episodes: mean return **{evaluation.mean_return:.1f}** "
             f"(std {evaluation.std_return:.1f}, mean length {evaluation.mean_length:.1f}).", "",
             f"![return curve]({CURVE_FILE})", "",
             "| iteration | env steps | episodes ended | mean return | policy loss | value loss | entropy "
             "| env steps/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for h in history:
        ret = "n/a" if h.mean_return is None else f"{h.mean_return:.1f}"
        lines.append(f"| {h.iteration} | {h.env_steps} | {h.episodes} | {ret} | {h.loss('policy_loss'):.4f} | "
                     f"{h.loss('value_loss'):.3f} | {h.loss('entropy'):.3f} | {h.env_steps_per_s:.0f} |")
    if history:
        lines += ["", f"Total: {history[-1].env_steps} environment steps in {len(history)} iterations."]
    path = storage.join(folder, "report.md")
    storage.write_text(path, "\n".join(lines) + "\n")
    return path


class IterationProgress:
    """Reinforcement learning: one line per iteration with the episode return, losses and env steps/s."""

    def __init__(self, iterations: int, stream: TextIO | None = None) -> None:
        self.iterations = iterations
        self.stream = stream or sys.stdout

    def __call__(self, r: IterationRecord) -> None:
        ret = "n/a (no episode ended)" if r.mean_return is None else \
            f"{r.mean_return:.1f} (length {r.mean_length:.1f}, {r.episodes} episodes)"
        self.stream.write(f"iteration {r.iteration}/{self.iterations}: return {ret} "
                          f"policy_loss {r.loss('policy_loss'):.4f} value_loss {r.loss('value_loss'):.3f} "
                          f"entropy {r.loss('entropy'):.3f} | {r.env_steps} env steps, "
                          f"{r.env_steps_per_s:.0f}/s (rollout {r.rollout_s:.2f} s, update {r.update_s:.2f} s)\n")
        self.stream.flush()
