"""Experiment tracking: MLflow and TensorBoard, fed from the driver, never in training's way.

A :class:`Tracker` fans each call (params, metrics, artifacts) out to its sinks. Every sink works
on its own background thread behind a queue, so a slow or dead tracking server costs training
nothing: the first failure prints one warning and turns that sink off for the rest of the run.
Ranks do not track; the driver turns their events into metrics (:meth:`Tracker.on_train_event`).

One dlpipe run is one MLflow run, found again by the tag ``dlpipe.run_id``: re-running a run id
(a resume, a cron retry) continues the same MLflow run instead of making a second one.
"""
from __future__ import annotations

import atexit
import json
import math
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.config import PipelineConfig, TrackingConfig, to_yaml
from pipelines.events import EpochEnded, EpochRecord, RankEvent, Resumed, StepProgress
from pipelines.runfolder import RunFolder
from pipelines.tracking.sinks import DatasetInput, Sink, TensorBoardSink

_UNSAFE_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": "0.001"}``; lists and empty dicts as JSON."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def numeric_figures(figures: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``figures`` (nested dicts flattened with ``.``), as metric values."""
    out: dict[str, float] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            out.update(numeric_figures(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[_UNSAFE_METRIC_CHARS.sub("_", f"{prefix}{key}")] = float(value)
    return out


class _Background:
    """Runs one sink's calls on a daemon thread; after the first failure drops every later call."""

    def __init__(self, sink: Sink, warn: Callable[[str], None]) -> None:
        self.sink = sink
        self.warn = warn
        self.failed = False
        self.calls: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name=f"dlpipe-tracking-{sink.name}", daemon=True)
        self.thread.start()
        self.submit("open")

    def submit(self, method: str, *args: Any) -> None:
        if not self.failed:
            self.calls.put((method, args))

    def finish(self, status: str, deadline: float, limit_s: float) -> None:
        """Close the run, waiting until ``deadline`` (monotonic) for queued calls; then give up with a
        warning naming the ``limit_s`` it was given."""
        self.submit("close", status)
        self.calls.put(None)
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive() and not self.failed:
            self.failed = True
            self.warn(f"{self.sink.name} tracking did not finish within {limit_s:g} s "
                      f"(tracking.flush_timeout_s): the rest of its records are dropped")

    def _work(self) -> None:
        while (item := self.calls.get()) is not None:
            if self.failed:
                continue
            method, args = item
            try:
                getattr(self.sink, method)(*args)
            except Exception as e:  # noqa: BLE001 - any failure of a tracking backend must not reach training
                self.failed = True
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                self.warn(f"{self.sink.name} tracking failed ({type(e).__name__}: {first[:300]}); it is off "
                          f"for the rest of this run, training goes on")


class Tracker:
    """Where a run's params, metrics and artifacts go: every enabled sink, in the background."""

    def __init__(self, sinks: list[Sink], flush_timeout_s: float = 60.0, stream: Any = None) -> None:
        self._stream = stream or sys.stderr
        self._workers = [_Background(sink, self._warn) for sink in sinks]
        self.flush_timeout_s = flush_timeout_s

    def _warn(self, message: str) -> None:
        # a tracking library's error may quote its server's URL, credentials included
        print(f"dlpipe: warning: {storage.redact(message)}", file=self._stream, flush=True)

    @property
    def active(self) -> bool:
        return any(not w.failed for w in self._workers)

    def log_params(self, params: dict[str, str]) -> None:
        for w in self._workers:
            w.submit("params", params)

    def log_metrics(self, values: dict[str, Any], step: int = 0) -> None:
        """Every finite number in ``values`` (nested dicts flattened) at ``step``."""
        numbers = numeric_figures(values)
        if numbers:
            stamp = int(time.time() * 1000)
            for w in self._workers:
                w.submit("metrics", numbers, step, stamp)

    def log_inputs(self, datasets: list[DatasetInput]) -> None:
        """The dataset versions the run trains on, with their content digests."""
        redacted = [DatasetInput(d.name, d.digest, storage.redact(d.source)) for d in datasets]
        for w in self._workers:
            w.submit("inputs", redacted)

    def log_artifact(self, location: str, folder: str = "") -> None:
        """Store the file at ``location`` (local, or in any store: copied to a local temp file
        first, since the sinks take local files) with the run."""
        if not self.active or not storage.is_file(location):
            return
        path = Path(location) if storage.is_local(location) else _local_copy(location)
        for w in self._workers:
            w.submit("artifact", path, folder)

    def on_train_event(self, event: RankEvent) -> None:
        """Metrics from the ranks' events: step figures as they come (the first one long before an
        epoch ends, step = global step), epoch figures at step = epoch."""
        if isinstance(event, Resumed) and event.rank == 0:
            # A killed attempt may have died with epoch records still queued: the checkpoint's
            # history is the truth, and each sink adds the epochs it does not hold yet.
            epochs = [(h.epoch, numeric_figures(h.figures())) for h in event.history]
            stamp = int(time.time() * 1000)
            for w in self._workers:
                w.submit("backfill", epochs, stamp)
        elif isinstance(event, StepProgress):
            step = (event.epoch - 1) * event.steps + event.step
            self.log_metrics({"step_loss": event.loss, "step_samples_per_s": event.samples_per_s}, step)
        elif isinstance(event, EpochEnded) and event.rank == 0:
            self.log_epoch(event.record)

    def log_epoch(self, record: EpochRecord) -> None:
        self.log_metrics(record.figures(), step=record.epoch)

    def close(self, status: str = "FINISHED") -> None:
        """End the run in every sink; waits at most ``flush_timeout_s`` in all."""
        deadline = time.monotonic() + self.flush_timeout_s
        for w in self._workers:
            w.finish(status, deadline, self.flush_timeout_s)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("FAILED" if exc_type else "FINISHED")


def _local_copy(location: str) -> Path:
    """A local temp copy of a stored file (kept until the process ends), named like it."""
    folder = Path(tempfile.mkdtemp(prefix="dlpipe-tracking-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / storage.name(location)
    path.write_bytes(storage.read_bytes(location))
    return path


# Overrides that turn tracking off: benchmarks and most tests measure something else.
TRACKING_OFF = ["tracking.mlflow=false", "tracking.tensorboard=false"]


LOCAL_TRACKING = "dlpipe-tracking"  # under the current folder: tracking's home when the workdir is remote


def tracking_home(config: PipelineConfig) -> Path:
    """Where the MLflow file store and TensorBoard's event files go by default: the workdir when it
    is local; a local folder when it is a store (both write local files only)."""
    workdir = config.workdir_location
    return Path(workdir) if storage.is_local(workdir) else Path(LOCAL_TRACKING).resolve()


def mlflow_uri(config: PipelineConfig) -> str:
    """``tracking.uri``, or a file store under the tracking home (works with no server)."""
    return config.tracking.uri or (tracking_home(config) / "mlruns").as_uri()


def tensorboard_dir(config: PipelineConfig) -> Path:
    home = tracking_home(config)
    if home == Path(config.workdir_location):
        return Path(RunFolder.of(config).tensorboard)
    return home / "tb" / config.run_id  # a tracking home of its own keeps every run's events together


_SAID_WHERE: set[str] = set()


def open_tracker(config: PipelineConfig, job: str) -> Tracker:
    """The tracker ``config.tracking`` asks for, its run started and the resolved config logged.
    With a workdir in a store, the local defaults are used and said once per process."""
    tc: TrackingConfig = config.tracking
    sinks: list[Sink] = []
    remote = not storage.is_local(config.workdir_location)
    if remote and (tc.mlflow or tc.tensorboard) and config.workdir_location not in _SAID_WHERE:
        _SAID_WHERE.add(config.workdir_location)
        where = []
        if tc.mlflow and not tc.uri:
            where.append(f"MLflow file store {mlflow_uri(config)}")
        if tc.tensorboard:
            where.append(f"TensorBoard events in {tensorboard_dir(config)}")
        if where:
            print(f"dlpipe: workdir {storage.redact(config.workdir_location)} is a store, and tracking writes local "
                  f"files: {'; '.join(where)} (set tracking.uri to an MLflow server to keep runs elsewhere)",
                  flush=True)
    if tc.mlflow:
        from pipelines.tracking.mlflow_sink import MlflowSink

        sinks.append(MlflowSink(mlflow_uri(config), tc.experiment, config.run_id, job, tc.timeout_s))
    if tc.tensorboard:
        sinks.append(TensorBoardSink(tensorboard_dir(config), to_yaml(config)))
    tracker = Tracker(sinks, tc.flush_timeout_s)
    tracker.log_params(flatten(config.to_dict()))
    return tracker
