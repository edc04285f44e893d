"""Driver-side progress: a bar per epoch with loss and samples/s, fed by rank 0's events; a line per RL iteration."""
from __future__ import annotations

import sys
from typing import Any, TextIO


class EpochProgress:
    """Renders ``progress`` and ``epoch`` events; on a terminal it redraws one line per epoch."""

    def __init__(self, epochs: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.width = width
        self.tty = self.stream.isatty()
        self._last_decile = -1

    def __call__(self, rank: int, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "progress":  # sent by one rank: the one that sees the loss
            self._bar(event)
        elif kind == "epoch" and rank == 0:
            self._epoch(event)

    def _bar(self, e: dict[str, Any]) -> None:
        done = e["step"] / e["steps"]
        filled = int(done * self.width)
        line = (f"epoch {e['epoch']}/{self.epochs} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{e['step']}/{e['steps']} loss {e['loss']:.4f} {e['samples_per_s']:.0f} samples/s")
        if self.tty:
            self.stream.write("\r" + line)
        else:  # logs: a line every 25 % instead of a redraw
            quarter = int(done * 4)
            if quarter == self._last_decile:
                return
            self._last_decile = quarter
            self.stream.write(line + "\n")
        self.stream.flush()

    def _epoch(self, e: dict[str, Any]) -> None:
        self._last_decile = -1
        metrics = " ".join(f"{k} {v:.4f}" for k, v in e.items()
                           if k.startswith("val_") and isinstance(v, float))
        end = "\n" if self.tty else ""
        self.stream.write(f"{end}epoch {e['epoch']}/{self.epochs} done: loss {e['loss']:.4f} {metrics} "
                          f"({e['samples_per_s']:.0f} samples/s, data wait {e['data_wait_fraction']:.0%})\n")
        self.stream.flush()


class IterationProgress:
    """Reinforcement learning: one line per iteration with the episode return, losses and env steps/s."""

    def __init__(self, iterations: int, stream: TextIO | None = None) -> None:
        self.iterations = iterations
        self.stream = stream or sys.stdout

    def __call__(self, r: dict[str, Any]) -> None:
        ret = "n/a (no episode ended)" if r["mean_return"] is None else \
            f"{r['mean_return']:.1f} (length {r['mean_length']:.1f}, {r['episodes']} episodes)"
        self.stream.write(f"iteration {r['iteration']}/{self.iterations}: return {ret} "
                          f"policy_loss {r['policy_loss']:.4f} value_loss {r['value_loss']:.3f} "
                          f"entropy {r['entropy']:.3f} | {r['env_steps']} env steps, "
                          f"{r['env_steps_per_s']:.0f}/s (rollout {r['rollout_s']:.2f} s, update {r['update_s']:.2f} s)\n")
        self.stream.flush()
