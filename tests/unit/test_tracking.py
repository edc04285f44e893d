"""Experiment tracking: the background sinks, and MLflow's own client reading back what they wrote."""
from __future__ import annotations

import io
import time

import pytest

from pipelines.events import EpochEnded, EpochRecord, Resumed, StepProgress
from pipelines.tracking import Sink, Tracker, flatten, numeric_figures
from pipelines.tracking.sinks import DatasetInput

PROGRESS = StepProgress(epoch=2, step=5, steps=10, loss=0.5, samples_per_s=900.0, rank=0)
EPOCH_FIGURES = {"epoch": 2, "loss": 0.4, "samples": 100, "seconds": 1.5, "val_loss": 0.45, "val_accuracy": 0.9,
                 "samples_per_s": 1000.0, "data_wait_fraction": 0.1}


def epoch(rank: int = 0, **changes) -> EpochEnded:
    """Rank ``rank``'s epoch event with ``changes`` to :data:`EPOCH_FIGURES`."""
    return EpochEnded(record=EpochRecord.from_dict({**EPOCH_FIGURES, **changes}), rank=rank)


class Recording(Sink):
    name = "Recording"

    def __init__(self, fail_on: str = "", delay_s: float = 0.0) -> None:
        self.calls: list[tuple] = []
        self.fail_on = fail_on
        self.delay_s = delay_s

    def _record(self, *call) -> None:
        time.sleep(self.delay_s)
        if call[0] == self.fail_on:
            raise ConnectionError("tracking server at http://127.0.0.1:9 refused the connection")
        self.calls.append(call)

    def open(self): self._record("open")
    def params(self, params): self._record("params", params)
    def metrics(self, values, step, timestamp_ms): self._record("metrics", values, step)
    def close(self, status): self._record("close", status)


def test_flatten_names_nested_keys_with_dots_and_keeps_lists_as_json():
    assert flatten({"train": {"lr": 0.001, "pipeline": {"microbatches": 4}}, "etl": {"splits": {}},
                    "infer": {"keep_columns": ["*"], "output": ""}}) == {
        "train.lr": "0.001", "train.pipeline.microbatches": "4", "etl.splits": "{}",
        "infer.keep_columns": '["*"]', "infer.output": ""}


def test_metrics_keep_finite_numbers_only_under_safe_names():
    assert numeric_figures({"eval": {"accuracy": 0.9, "rows": 289, "labels": ["0"], "ok": True},
                            "loss": float("nan"), "quarantine_by_reason": {"bad label (x)": 2}}) == {
        "eval.accuracy": 0.9, "eval.rows": 289.0, "quarantine_by_reason.bad label _x_": 2.0}


def test_rank_events_become_step_and_epoch_metrics():
    sink = Recording()
    tracker = Tracker([sink])
    tracker.on_train_event(PROGRESS)
    tracker.on_train_event(epoch(rank=1, loss=9.0))  # only rank 0's epoch record counts
    tracker.on_train_event(epoch())
    tracker.close()
    assert sink.calls == [
        ("open",),
        ("metrics", {"step_loss": 0.5, "step_samples_per_s": 900.0}, 15),  # global step: (2 - 1) * 10 + 5
        ("metrics", {"loss": 0.4, "samples": 100.0, "seconds": 1.5, "val_loss": 0.45, "val_accuracy": 0.9,
                     "samples_per_s": 1000.0, "data_wait_fraction": 0.1}, 2),
        ("close", "FINISHED")]


def test_a_tracking_library_error_quoting_credentials_is_printed_redacted():
    class Leaky(Recording):
        def metrics(self, values, step, timestamp_ms):
            raise ConnectionError("POST https://alice:TOPSECRET@mlflow.example.com/api failed")

    stream = io.StringIO()
    with Tracker([Leaky()], stream=stream) as tracker:
        tracker.log_metrics({"loss": 1.0}, 0)
    assert "https://***@mlflow.example.com/api" in stream.getvalue() and "TOPSECRET" not in stream.getvalue()


def test_a_failing_sink_warns_once_and_the_others_go_on():
    broken, working, stream = Recording(fail_on="metrics"), Recording(), io.StringIO()
    with Tracker([broken, working], stream=stream) as tracker:
        for step in range(5):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
    warnings = stream.getvalue().splitlines()
    assert len(warnings) == 1, warnings
    assert "Recording tracking failed (ConnectionError: tracking server at http://127.0.0.1:9 refused" in warnings[0]
    assert "training goes on" in warnings[0]
    assert broken.calls == [("open",)]  # nothing after the failure, not even close
    assert [c[2] for c in working.calls if c[0] == "metrics"] == [0, 1, 2, 3, 4]


def test_a_slow_sink_never_slows_the_caller_and_close_waits_only_its_timeout():
    slow, stream = Recording(delay_s=0.5), io.StringIO()
    tracker = Tracker([slow], flush_timeout_s=1.0, stream=stream)
    started = time.monotonic()
    for step in range(20):
        tracker.log_metrics({"loss": 1.0}, step)
    assert time.monotonic() - started < 0.2  # queued, not sent
    tracker.close()
    assert time.monotonic() - started < 3.0
    assert "did not finish within 1 s (tracking.flush_timeout_s)" in stream.getvalue()
    assert not tracker.active


def test_an_exception_inside_the_block_marks_the_run_failed():
    sink = Recording()
    with pytest.raises(RuntimeError):
        with Tracker([sink]):
            raise RuntimeError("stage infer failed")
    assert sink.calls[-1] == ("close", "FAILED")


def test_mlflow_run_holds_params_metrics_and_artifacts_and_a_rerun_continues_it(tmp_path):
    from pipelines.tracking.mlflow_sink import RUN_ID_TAG, MlflowSink, mlflow_client

    uri = (tmp_path / "mlruns").as_uri()
    artifact = tmp_path / "summary.json"
    artifact.write_text('{"status": "ok"}')
    first = Tracker([MlflowSink(uri, "dlpipe-test", "run-a", "run", timeout_s=5)])
    first.log_params({"train.lr": "0.001", "train.epochs": "3"})
    first.on_train_event(PROGRESS)
    client = mlflow_client(uri)
    # The first step metric reaches the store while the epoch is still running.
    deadline = time.monotonic() + 10
    runs = []
    while time.monotonic() < deadline and not (runs and runs[0].data.metrics.get("step_loss") == 0.5):
        experiment = client.get_experiment_by_name("dlpipe-test")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        time.sleep(0.1)
    assert runs and runs[0].data.metrics["step_loss"] == 0.5
    first.on_train_event(epoch())
    first.log_artifact(str(artifact), "report")
    first.log_inputs([DatasetInput("digits v1", "d1", "s3://bucket/datasets/digits/v000001-a")])
    first.close()

    again = Tracker([MlflowSink(uri, "dlpipe-test", "run-a", "run", timeout_s=5)], stream=io.StringIO())
    again.log_params({"train.lr": "0.001", "train.epochs": "5"})  # a re-run with more epochs
    # It resumes after epoch 2; epoch 1 never reached the store (the first attempt was killed).
    history = [EpochRecord.from_dict({**EPOCH_FIGURES, "epoch": 1, "loss": 0.6}),
               EpochRecord.from_dict({**EPOCH_FIGURES, "epoch": 2, "loss": 0.4})]
    again.on_train_event(Resumed(epochs_done=2, step=0, history=history, rank=0))
    again.on_train_event(epoch(epoch=3, loss=0.3))
    again.log_inputs([DatasetInput("digits v1", "d1", "s3://bucket/datasets/digits/v000001-a"),
                      DatasetInput("digits v2", "d2", "s3://bucket/datasets/digits/v000002-b")])
    again.close()

    experiment = client.get_experiment_by_name("dlpipe-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run-a" and run.data.tags[RUN_ID_TAG] == "run-a"
    assert run.data.params == {"train.lr": "0.001", "train.epochs": "3"}
    assert run.data.tags["dlpipe.params_changed_on_rerun"] == "train.epochs"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert history == [(1, 0.6), (2, 0.4), (3, 0.3)]  # each epoch once: backfilled, not duplicated
    assert [f.path for f in client.list_artifacts(run.info.run_id, "report")] == ["report/summary.json"]
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs  # each version once, with its digest
    assert sorted((i.dataset.name, i.dataset.digest, i.dataset.source) for i in inputs) == [
        ("digits v1", "d1", "s3://bucket/datasets/digits/v000001-a"),
        ("digits v2", "d2", "s3://bucket/datasets/digits/v000002-b")]
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}


def test_mlflow_at_an_unreachable_server_fails_fast_with_one_warning(tmp_path):
    import socket

    from pipelines.tracking.mlflow_sink import MlflowSink

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stream = io.StringIO()
    started = time.monotonic()
    with Tracker([MlflowSink(f"http://127.0.0.1:{port}", "dlpipe", "run-b", "train", timeout_s=2)],
                 flush_timeout_s=30, stream=stream) as tracker:
        tracker.log_params({"train.lr": "0.001"})
        for number in range(1, 4):
            tracker.on_train_event(epoch(epoch=number))
    assert time.monotonic() - started < 20  # MLflow alone would retry for minutes
    warnings = stream.getvalue().splitlines()
    assert len(warnings) == 1 and "MLflow tracking failed" in warnings[0] and str(port) in warnings[0], warnings
