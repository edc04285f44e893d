"""Training through the real pipeline: Petastorm shards -> 2 Horovod ranks in a barrier stage."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from testkit import make_config
from pipelines import dataset, events
from pipelines.infer import job as infer
from pipelines.train import driver as train
from pipelines.train.driver import TrainError
from pipelines.train.job import plan_job


def _weights(run_dir):
    return torch.load(Path(run_dir) / "model" / "model.pt", weights_only=True)["state_dict"]


def _history(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_cnn(spark, digits_workdir):
    """A CNN trained on 2 ranks for 15 epochs (shared by the tests of this module)."""
    config = make_config(digits_workdir, "run_id=cnn-15", "train.epochs=15")
    result = train.main(spark, config)
    return config, result


def test_two_ranks_reach_95_percent_test_accuracy(spark, trained_cnn):
    config, result = trained_cnn
    assert result.epochs_completed == 15
    scored = infer.main(spark, config)
    assert scored.eval.accuracy >= 0.95


def test_metrics_jsonl_has_one_line_per_epoch_with_samples_seen(trained_cnn, digits_workdir):
    config, _ = trained_cnn
    view = dataset.open_dataset(str(digits_workdir / "datasets" / "digits"))
    lines = _history(config.run_dir())
    assert [x["epoch"] for x in lines] == list(range(1, 16))
    train_rows = view.counts["train"]
    batch, ranks = config.train.batch_size, config.train.num_workers
    for x in lines:
        # the whole split, up to at most one batch per rank
        assert train_rows - batch * ranks < x["samples"] <= train_rows + batch * ranks
        assert 0.0 <= x["data_wait_fraction"] <= 1.0
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "samples_per_s"} <= set(x)
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_the_result_says_which_device_each_rank_used(trained_cnn):
    _, result = trained_cnn
    assert [d.rank for d in result.devices] == [0, 1]
    assert all(d.device == "cpu" and d.gpu == "" for d in result.devices)  # this machine has no GPU
    assert "no CUDA device" in result.devices[0].reason
    assert result.precision == "fp32" and result.dataset_version == 1
    assert result.checkpoint_times["count"] == 15 and result.checkpoint_times["write_s"] > 0


def test_cuda_requested_without_a_gpu_fails_before_spark(digits_workdir):
    from pipelines.errors import ConfigError
    from pipelines.preflight import validate

    config = make_config(digits_workdir, "run_id=cuda-none", "train.device=cuda")
    with pytest.raises(ConfigError, match=r"'train.device' = 'cuda' but there is no GPU here.*train.device=auto"):
        validate(config, "train", master="local[2]")
    assert not Path(config.run_dir()).exists()  # nothing started


def test_artifact_holds_all_inference_needs(trained_cnn):
    config, result = trained_cnn
    artifact = torch.load(result.artifact, weights_only=True)
    assert artifact["model_name"] == "cnn"
    assert artifact["label_names"] == [str(i) for i in range(10)]
    assert artifact["feature_shape"] == [1, 8, 8]
    assert len(artifact["normalization"]["mean"]) == 1
    assert artifact["dataset_version"] == 1 and artifact["init_from"] == ""


def test_same_seed_same_ranks_give_identical_weights(spark, digits_workdir):
    runs = []
    for run_id in ("same-seed-a", "same-seed-b"):
        config = make_config(digits_workdir, f"run_id={run_id}", "train.epochs=2")
        train.main(spark, config)
        runs.append(_weights(config.run_dir()))
    assert runs[0].keys() == runs[1].keys()
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_a_rank_killed_mid_epoch_is_retried_from_the_checkpoint(spark, digits_workdir):
    """SIGKILL rank 1 in epoch 3; with max_attempts=2 the run resumes after epoch 2 and ends with
    the same weights as an uninterrupted run."""
    pids: dict[int, int] = {}
    killed = []

    def kill_rank_1_in_epoch_3(event):
        if isinstance(event, events.Started):
            pids[event.rank] = event.pid
        if (isinstance(event, events.StepProgress) and event.epoch == 3 and event.step >= event.steps // 2
                and not killed):
            os.kill(pids[1], signal.SIGKILL)
            killed.append(pids[1])

    config = make_config(digits_workdir, "run_id=killed", "train.epochs=5", "train.max_attempts=2",
                         "train.failure_timeout_s=30")
    result = train.main(spark, config, on_event=kill_rank_1_in_epoch_3)
    assert killed, "the test never killed a rank"
    assert result.epochs_completed == 5
    history = _history(config.run_dir())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]

    clean = make_config(digits_workdir, "run_id=not-killed", "train.epochs=5")
    train.main(spark, clean)
    resumed, uninterrupted = _weights(config.run_dir()), _weights(clean.run_dir())
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=1e-6)


def test_the_training_settings_reach_every_rank_in_the_job_and_each_rank_gets_its_own_core(spark, digits_workdir):
    """Horovod's cycle and fusion settings are set by the rank from its job (before hvd.init); with
    a core per rank, each rank process runs on its own core (train.pin_ranks)."""
    config = make_config(digits_workdir, "run_id=rank-env", "train.horovod_cycle_time_ms=3")
    seen: dict[int, dict] = {}
    job = plan_job(config)

    def record(event):
        if isinstance(event, events.Probe):
            seen[event.rank] = event.data

    from pipelines.launcher import LaunchOptions, run_ranks
    from pipelines.train.rendezvous import HorovodRendezvous

    run_ranks(spark, "rank_probes:horovod_settings", job.to_dict(), num_workers=2, rendezvous=HorovodRendezvous(),
              on_event=record, options=LaunchOptions(pin_cores=True))
    for rank in (0, 1):
        assert seen[rank]["env"]["HOROVOD_CYCLE_TIME"] == "3.0"
        assert seen[rank]["env"]["HOROVOD_FUSION_THRESHOLD"] == str(32 << 20)
    if len(os.sched_getaffinity(0)) >= 2:  # 2 ranks x 1 thread: one core each, not the same one
        cores = {r: seen[r]["cores"] for r in (0, 1)}
        assert len(cores[0]) == len(cores[1]) == 1 and cores[0] != cores[1], cores


def test_more_ranks_than_row_groups_is_caught_before_launch(spark, digits_workdir):
    config = make_config(digits_workdir, "run_id=too-many", "train.num_workers=64")
    with pytest.raises(TrainError, match="train.num_workers=64"):
        train.main(spark, config)


def test_a_checkpoint_inside_an_epoch_resumes_there_with_identical_weights(spark, digits_workdir):
    """train.checkpoint_every_steps=5; rank 0 dies at step 13 of epoch 2: the retry resumes 10 steps
    into epoch 2 (steps 11-13 are redone, nothing else) and ends with an uninterrupted run's weights."""
    seen: list[tuple] = []

    def record(event):
        if isinstance(event, events.Resumed):
            seen.append(("resume", event.epochs_done, event.step))
        elif isinstance(event, events.CheckpointSaved):
            seen.append(("checkpoint", event.epoch, event.step))

    config = make_config(digits_workdir, "run_id=killed-inside-epoch", "train.epochs=3", "train.max_attempts=2",
                         "train.failure_timeout_s=30", "train.checkpoint_every_steps=5")
    result = train.main(spark, config, on_event=record, entry="rank_faults:train_rank_killed_inside_epoch_2")
    assert ("checkpoint", 2, 10) in seen and ("resume", 1, 10) in seen, seen
    assert result.epochs_completed == 3
    history = _history(config.run_dir())
    assert [h["epoch"] for h in history] == [1, 2, 3]

    clean = make_config(digits_workdir, "run_id=not-killed-3", "train.epochs=3")
    train.main(spark, clean)
    resumed, uninterrupted = _weights(config.run_dir()), _weights(clean.run_dir())
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    clean_history = _history(clean.run_dir())
    for a, b in zip(history, clean_history):  # the resumed epoch's loss counts every step exactly once
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9) and a["samples"] == b["samples"]


def test_accumulated_steps_with_a_compressed_all_reduce_cover_the_split_and_learn(spark, digits_workdir):
    """train.grad_accumulation=2 with train.grad_compression=fp16 through the whole trainer: an epoch
    is half as many optimizer steps of twice the rows, still the whole split, and the model learns."""
    config = make_config(digits_workdir, "run_id=accumulate-fp16", "train.epochs=4", "train.grad_accumulation=2",
                         "train.grad_compression=fp16")
    result = train.main(spark, config)
    assert result.epochs_completed == 4
    view = dataset.open_dataset(str(digits_workdir / "datasets" / "digits"))
    rows_per_step = config.train.batch_size * 2 * config.train.num_workers
    lines = _history(config.run_dir())
    for x in lines:
        assert x["samples"] % rows_per_step == 0
        assert view.counts["train"] - rows_per_step < x["samples"] <= view.counts["train"] + rows_per_step
    assert lines[-1]["loss"] < lines[0]["loss"] and lines[-1]["val_accuracy"] >= 0.85, lines[-1]
