"""Where tracked records go: the :class:`Sink` contract, and TensorBoard's event files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DatasetInput:
    """A dataset version a run trained on, as trackers record it (MLflow's dataset inputs)."""

    name: str  # e.g. "digits v3"
    digest: str  # the version's content digest (its manifest's identity)
    source: str  # where it is (credentials redacted)


class Sink:
    """One tracking backend. Methods run on the sink's own thread, in call order; any may raise."""

    name = "sink"

    def open(self) -> None:
        """Connect, find or create the run."""

    def params(self, params: dict[str, str]) -> None:
        """Record the run's parameters."""

    def metrics(self, values: dict[str, float], step: int, timestamp_ms: int) -> None:
        """Record ``values`` at ``step``."""

    def backfill(self, epochs: list[tuple[int, dict[str, float]]], timestamp_ms: int) -> None:
        """Record the per-epoch figures of a resumed run that this sink does not hold yet
        (default: all of them again; the same value at the same step draws the same point)."""
        for step, values in epochs:
            self.metrics(values, step, timestamp_ms)

    def inputs(self, datasets: list[DatasetInput]) -> None:
        """Record the datasets the run trained on (default: nothing)."""

    def artifact(self, path: Path, folder: str) -> None:
        """Store a file with the run."""

    def close(self, status: str) -> None:
        """Mark the run finished (``FINISHED`` / ``FAILED``) and release connections."""


class TensorBoardSink(Sink):
    """Event files under ``<run dir>/tb``; the resolved config as a text summary."""

    name = "TensorBoard"

    def __init__(self, log_dir: Path, config_yaml: str) -> None:
        self.log_dir = log_dir
        self.config_yaml = config_yaml
        self.writer: Any = None

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        # Markdown code block: TensorBoard renders text summaries as Markdown.
        self.writer.add_text("config", "```\n" + self.config_yaml + "```")

    def metrics(self, values: dict[str, float], step: int, timestamp_ms: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step, walltime=timestamp_ms / 1000)
        self.writer.flush()  # readable while the run goes on

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()

