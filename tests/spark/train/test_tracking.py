"""Tracking around real training: a dead MLflow server costs one warning, TensorBoard gets every epoch."""
from __future__ import annotations

import socket

from testkit import make_config
from pipelines.train import driver as train


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_training_with_an_unreachable_tracking_server_finishes_with_a_single_warning(spark, digits_workdir, capsys):
    port = _closed_port()
    config = make_config(digits_workdir, "run_id=dead-mlflow", "train.epochs=3", "tracking.mlflow=true",
                         f"tracking.uri=http://127.0.0.1:{port}", "tracking.tensorboard=true", "tracking.timeout_s=2")
    result = train.main(spark, config)
    assert result.epochs_completed == 3
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "dlpipe: warning" in line]
    assert len(warnings) == 1 and "MLflow tracking failed" in warnings[0] and str(port) in warnings[0], warnings

    # TensorBoard, the other sink, went on: every epoch's figures, and step figures within the epochs.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(f"{config.run_dir()}/tb")
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert [round(e.value, 6) for e in events.Scalars("loss")] == [round(h.loss, 6) for h in result.history]
    assert [e.step for e in events.Scalars("val_accuracy")] == [1, 2, 3]
    steps = [e.step for e in events.Scalars("step_loss")]
    assert len(steps) > 3 and steps == sorted(steps)
