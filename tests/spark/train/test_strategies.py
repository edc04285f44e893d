"""Every training strategy through the real pipeline: barrier stage, Petastorm, checkpoints, artifact, inference."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from pathlib import Path

import strategy_workers as w
from testkit import make_config
from pipelines import events, run
from pipelines.launcher import run_ranks
from pipelines.train import driver as train
from pipelines.train.rendezvous import HorovodRendezvous


def _weights(config):
    return torch.load(Path(config.run_dir()) / "model" / "model.pt", weights_only=True)["state_dict"]


def _history(config) -> list[dict]:
    return [json.loads(x) for x in (Path(config.run_dir()) / "metrics.jsonl").read_text().splitlines()]


def test_horovod_accumulates_batches_and_all_reduces_them_once_in_fp16(spark):
    """4 batches a step, one fp16 all-reduce (backward_passes_per_step, Compression.fp16): the mean
    gradient of the whole batch, to fp16's precision."""
    result = run_ranks(spark, "strategy_workers:horovod_step_entry", {"accumulation": 4, "compression": "fp16"},
                       num_workers=2, rendezvous=HorovodRendezvous())
    exact = w.reference_gradients()
    assert set(result["grads"]) == set(exact)
    for name, grad in exact.items():
        got = torch.tensor(result["grads"][name]).view_as(grad)
        torch.testing.assert_close(got, grad, rtol=2e-2, atol=1e-4)
    assert any(not torch.equal(torch.tensor(result["grads"][n]).view_as(g), g) for n, g in exact.items())
    assert {tuple(d) for d in result["dtypes"].values()} == {("torch.float32",)}  # compression is not precision


def test_horovod_under_bf16_computes_every_layer_in_bf16(spark):
    """Every conv/linear forward and backward of rank 0 produced bfloat16 (autocast in effect), and
    the averaged gradients moved as bf16 moves them (the first conv's by about 10%)."""
    result = run_ranks(spark, "strategy_workers:horovod_step_entry",
                       {"accumulation": 1, "compression": "none", "precision": "bf16"},
                       num_workers=2, rendezvous=HorovodRendezvous())
    layers = [n for n, m in w.make_model().named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert set(result["dtypes"]) == {f"{layer} {way}" for layer in layers for way in ("forward", "backward")}
    assert {tuple(d) for d in result["dtypes"].values()} == {("torch.bfloat16",)}
    exact = w.reference_gradients()
    moved = [((torch.tensor(result["grads"][n]).view_as(g) - g).norm() / g.norm()).item() for n, g in exact.items()]
    assert 1e-2 < max(moved) < 0.5, moved


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "pipeline"])
def test_each_strategy_trains_the_cnn_through_dlpipe_run_and_scores_unchanged(spark, tmp_path, strategy):
    config = make_config(tmp_path, f"run_id={strategy}", f"train.strategy={strategy}", "train.epochs=15")
    summary = run.main(spark, config)
    assert summary.status == "ok" and summary.train.epochs_completed == 15
    assert summary.eval.accuracy >= 0.95, summary.eval
    history = _history(config)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "samples_per_s"} <= set(history[-1])
    artifact = torch.load(Path(config.run_dir()) / "model" / "model.pt", weights_only=True)
    assert artifact["model_name"] == "cnn" and set(artifact["state_dict"]) == set(_weights(config))


@pytest.mark.slow
def test_ddp_trains_and_a_killed_rank_resumes_from_the_checkpoint_with_identical_weights(spark, digits_workdir):
    """SIGKILL rank 1 in epoch 3 under DDP; with max_attempts=2 the run resumes after epoch 2 and ends with
    the same weights as an uninterrupted DDP `dlpipe run`, which itself reaches the accuracy target."""
    pids: dict[int, int] = {}
    killed: list[int] = []

    def kill_rank_1_in_epoch_3(event):
        if isinstance(event, events.Started):
            pids[event.rank] = event.pid
        if (isinstance(event, events.StepProgress) and event.epoch == 3 and event.step >= event.steps // 2
                and not killed):
            os.kill(pids[1], signal.SIGKILL)
            killed.append(pids[1])

    common = ["train.strategy=ddp", "train.epochs=15"]
    config = make_config(digits_workdir, "run_id=ddp-killed", *common, "train.max_attempts=2",
                         "train.failure_timeout_s=30")
    result = train.main(spark, config, on_event=kill_rank_1_in_epoch_3)
    assert killed, "the test never killed a rank"
    assert result.epochs_completed == 15
    history = _history(config)
    assert [h["epoch"] for h in history] == list(range(1, 16))

    clean = make_config(digits_workdir, "run_id=ddp-clean", *common)
    summary = run.main(spark, clean)  # the whole dlpipe run (its ETL republishes the same dataset)
    assert summary.status == "ok" and summary.eval.accuracy >= 0.95, summary.eval
    resumed, uninterrupted = _weights(config), _weights(clean)
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_a_model_with_too_few_split_points_for_the_ranks_is_caught_before_spark(digits_workdir):
    from pipelines.errors import ConfigError
    from pipelines.preflight import validate

    config = make_config(digits_workdir, "run_id=pipe-too-many", "train.strategy=pipeline", "train.num_workers=64")
    with pytest.raises(ConfigError, match="cannot be cut into 64 pipeline stages") as err:
        # on a cluster master (64 task slots are the cluster's business); the shape comes from the dataset
        validate(config, "train", master="spark://127.0.0.1:7077")
    assert err.value.key == "train.num_workers"
