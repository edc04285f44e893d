"""The RL run report: the return curve (PNG) and ``report.md`` with the evaluation and the last iteration."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.publish import write_text_atomic

CURVE_FILE = "return_curve.png"


def plot_return_curve(history: list[dict[str, Any]], path: Path, env_id: str,
                      greedy_return: float | None = None) -> None:
    """Mean episode return of each iteration's rollouts against environment steps, and the final
    greedy evaluation's mean return as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(h["env_steps"], h["mean_return"]) for h in history if h["mean_return"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot(*zip(*points), marker="o", markersize=3, label="rollouts (sampled actions)")
    if greedy_return is not None:
        ax.axhline(greedy_return, color="tab:green", linestyle="--", label=f"final greedy evaluation: {greedy_return:.1f}")
    ax.legend(loc="lower right")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean episode return")
    ax.set_title(env_id)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_rl_report(run_dir: Path, history: list[dict[str, Any]], evaluation: dict[str, Any], env_id: str) -> Path:
    """``<run>/report/report.md`` and the return curve beside it; returns the report's path."""
    folder = run_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    plot_return_curve(history, folder / CURVE_FILE, env_id, evaluation["mean_return"])
    last = history[-1] if history else {}
    lines = [f"# RL run {run_dir.name}: {env_id}", "",
             f"Greedy evaluation, {evaluation['episodes']} episodes: mean return **{evaluation['mean_return']:.1f}** "
             f"(std {evaluation['std_return']:.1f}, mean length {evaluation['mean_length']:.1f}).", "",
             f"![return curve]({CURVE_FILE})", "",
             "| iteration | env steps | mean return | policy loss | value loss | entropy | env steps/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for h in history:
        ret = "n/a" if h["mean_return"] is None else f"{h['mean_return']:.1f}"
        lines.append(f"| {h['iteration']} | {h['env_steps']} | {ret} | {h['policy_loss']:.4f} | "
                     f"{h['value_loss']:.3f} | {h['entropy']:.3f} | {h['env_steps_per_s']:.0f} |")
    if last:
        lines += ["", f"Total: {last['env_steps']} environment steps in {len(history)} iterations."]
    path = folder / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
