"""Driver-side progress: one display at a time, readable when captured to a file.

Spark's own console bar is off (``spark-conf/spark-defaults.conf``): it shares the terminal line
with dlpipe's epoch bar and fills logs with carriage returns. Instead:

- :class:`EpochProgress` draws the training bar from the reporting rank's events;
- :func:`spark_progress` shows the running Spark stage of an ETL or inference step.

On a terminal each redraws one line; in a log (cron, Airflow, a file) they write whole lines only:
one per epoch, plus at most one per :data:`LOG_EVERY_S` while a long epoch or stage runs.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from pipelines.events import EpochEnded, RankEvent, StepProgress

LOG_EVERY_S = 60.0  # in logs, the longest silence while an epoch or a Spark stage runs
POLL_S = 0.5  # how often the Spark stage display looks at the status tracker


class EpochProgress:
    """Renders ``progress`` and ``epoch`` events: a redrawn bar on a terminal, whole lines in logs."""

    def __init__(self, epochs: int, stream: TextIO | None = None, width: int = 30,
                 log_every_s: float = LOG_EVERY_S) -> None:
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.width = width
        self.tty = self.stream.isatty()
        self.log_every_s = log_every_s
        self._last_line = time.monotonic()

    def __call__(self, event: RankEvent) -> None:
        if isinstance(event, StepProgress):  # sent by one rank: the one that sees the loss
            self._bar(event)
        elif isinstance(event, EpochEnded) and event.rank == 0:
            self._epoch(event)

    def _bar(self, e: StepProgress) -> None:
        filled = int(e.step / e.steps * self.width)
        line = (f"epoch {e.epoch}/{self.epochs} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{e.step}/{e.steps} loss {e.loss:.4f} {e.samples_per_s:.0f} samples/s")
        if self.tty:
            self.stream.write("\r" + line)
        elif time.monotonic() - self._last_line >= self.log_every_s and e.step < e.steps:
            self.stream.write(line + "\n")  # a long epoch in a log: a sign of life, now and then
            self._last_line = time.monotonic()
        else:
            return
        self.stream.flush()

    def _epoch(self, event: EpochEnded) -> None:
        e = event.record
        metrics = " ".join(f"val_{k} {v:.4f}" for k, v in e.val.items())
        end = "\r\033[K" if self.tty else ""  # a terminal: the summary replaces the bar
        self.stream.write(f"{end}epoch {e.epoch}/{self.epochs} done: loss {e.loss:.4f} {metrics} "
                          f"({e.samples_per_s:.0f} samples/s, data wait {e.data_wait_fraction:.0%})\n")
        self.stream.flush()
        self._last_line = time.monotonic()


def stage_line(label: str, stage_id: int, name: str, done: int, total: int) -> str:
    """``[etl] Spark stage 12 (parquet at ...): 3/8 tasks``."""
    return f"[{label}] Spark stage {stage_id} ({name[:40]}): {done}/{total} tasks"


@contextlib.contextmanager
def spark_progress(spark: Any, label: str, shown: bool = True, stream: TextIO | None = None,
                   log_every_s: float = LOG_EVERY_S) -> Iterator[None]:
    """While the block runs, show the active Spark stage of this session (one line at a time).

    ``shown=False`` (training: its epoch bar is the display) shows nothing.
    """
    stream = stream or sys.stdout
    if not shown:
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=_watch_stages, args=(spark, label, stream, stop, log_every_s),
                              name=f"dlpipe-progress-{label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _watch_stages(spark: Any, label: str, stream: TextIO, stop: threading.Event, log_every_s: float) -> None:
    tty = stream.isatty()
    tracker = spark.sparkContext.statusTracker()
    drawn = False
    last_line = time.monotonic()
    while not stop.wait(POLL_S):
        try:
            infos = [i for i in (tracker.getStageInfo(s) for s in tracker.getActiveStageIds()) if i is not None]
        except Exception:  # noqa: BLE001 - the session is stopping (any Py4J error): nothing left to show
            break
        if not infos:
            continue
        info = max(infos, key=lambda i: i.stageId)
        line = stage_line(label, info.stageId, info.name, info.numCompletedTasks, info.numTasks)
        if tty:
            stream.write("\r\033[K" + line)
            drawn = True
        elif time.monotonic() - last_line >= log_every_s:
            stream.write(line + "\n")
            last_line = time.monotonic()
        else:
            continue
        stream.flush()
    if drawn:
        stream.write("\r\033[K")  # leave the line to whatever prints next
        stream.flush()
