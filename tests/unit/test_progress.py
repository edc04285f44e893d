"""Console progress: a redrawn line on a terminal, whole lines (one per epoch) in a captured log."""
from __future__ import annotations

import io
import time
from types import SimpleNamespace
from typing import Callable

from pipelines.events import EpochEnded, EpochRecord, StepProgress
from pipelines.progress import EpochProgress, spark_progress


def _record(epoch: int) -> EpochRecord:
    return EpochRecord(epoch=epoch, loss=0.1, samples=10, samples_per_s=1000.0, seconds=1.0, data_wait_fraction=0.05,
                       val={"accuracy": 0.9})


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _epoch(progress: EpochProgress, epoch: int, steps: int = 20) -> None:
    for step in range(1, steps + 1):
        progress(StepProgress(epoch=epoch, step=step, steps=steps, loss=1.0 / step, samples_per_s=1000.0, rank=0))
    progress(EpochEnded(record=_record(epoch), rank=0))


def test_a_captured_log_gets_one_whole_line_per_epoch():
    log = io.StringIO()
    progress = EpochProgress(epochs=3, stream=log)
    for epoch in (1, 2, 3):
        _epoch(progress, epoch)
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue()
    assert lines == [f"epoch {e}/3 done: loss 0.1000 val_accuracy 0.9000 (1000 samples/s, data wait 5%)"
                     for e in (1, 2, 3)] + [""]


def test_a_long_epoch_in_a_log_says_where_it_is_now_and_then():
    log = io.StringIO()
    progress = EpochProgress(epochs=1, stream=log, log_every_s=0.05)
    for step in (1, 2):
        time.sleep(0.06)
        progress(StepProgress(epoch=1, step=step, steps=4, loss=0.5, samples_per_s=10.0, rank=0))
    lines = log.getvalue().splitlines()
    assert lines == ["epoch 1/1 [#######.......................] 1/4 loss 0.5000 10 samples/s",
                     "epoch 1/1 [###############...............] 2/4 loss 0.5000 10 samples/s"]


def test_a_terminal_redraws_one_line_and_the_epoch_summary_replaces_it():
    term = Terminal()
    _epoch(EpochProgress(epochs=1, stream=term), 1, steps=2)
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("(1000 samples/s, data wait 5%)\n")
    assert text.startswith("\repoch 1/1 [") and "\r\033[Kepoch 1/1 done" in text


def test_only_rank_0_epoch_records_are_printed():
    log = io.StringIO()
    EpochProgress(epochs=2, stream=log)(EpochEnded(record=_record(1), rank=1))
    assert log.getvalue() == ""


def _fake_spark(stages):
    """A status tracker reporting ``stages`` (id -> (name, done, total)) as active: pure display logic."""
    tracker = SimpleNamespace(
        getActiveStageIds=lambda: list(stages),
        getStageInfo=lambda i: SimpleNamespace(stageId=i, name=stages[i][0], numCompletedTasks=stages[i][1],
                                               numTasks=stages[i][2]))
    return SimpleNamespace(sparkContext=SimpleNamespace(statusTracker=lambda: tracker))


def _wait_for(text: Callable[[], str], what: str, timeout_s: float = 30.0) -> None:
    """Poll until ``what`` shows in ``text()``: the watcher thread draws every 0.5 s, so a quiet
    machine needs about that; 30 s leaves room for a loaded 2-core one."""
    deadline = time.monotonic() + timeout_s
    while what not in text():
        assert time.monotonic() < deadline, f"{what!r} not drawn within {timeout_s} s: {text()!r}"
        time.sleep(0.05)


def test_the_running_spark_stage_is_drawn_on_a_terminal_and_cleared_after():
    term = Terminal()
    with spark_progress(_fake_spark({3: ("parquet at etl.py:10", 1, 8), 4: ("save at parts.py:5", 2, 4)}),
                        "etl", stream=term):
        _wait_for(term.getvalue, "Spark stage 4")
    text = term.getvalue()
    assert "\r\033[K[etl] Spark stage 4 (save at parts.py:5): 2/4 tasks" in text  # the newest stage
    assert text.endswith("\r\033[K") and "\n" not in text


def test_spark_stages_in_a_log_are_whole_lines_at_most_every_interval():
    log = io.StringIO()
    with spark_progress(_fake_spark({7: ("collect", 5, 10)}), "infer", stream=log, log_every_s=3600):
        time.sleep(0.8)
    assert log.getvalue() == ""  # a short stage in a log: nothing beside dlpipe's own stage lines
    with spark_progress(_fake_spark({7: ("collect", 5, 10)}), "infer", stream=log, log_every_s=0.0):
        _wait_for(log.getvalue, "\n")  # one whole line
    assert log.getvalue().splitlines()[0] == "[infer] Spark stage 7 (collect): 5/10 tasks"
    assert "\r" not in log.getvalue()


def test_training_shows_no_spark_stage_display():
    term = Terminal()
    with spark_progress(_fake_spark({1: ("barrier", 0, 2)}), "train", shown=False, stream=term):
        time.sleep(0.7)
    assert term.getvalue() == ""
