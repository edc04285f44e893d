"""The GAN, two optimizers, on real ranks: Horovod averages each phase once; checkpoints hold both
networks and both optimizers, so a resumed run ends where an uninterrupted one does."""
from __future__ import annotations

import os
import signal

import pytest
import torch

import strategy_workers as w
from pathlib import Path

from testkit import make_config
from pipelines import events
from pipelines.launcher import run_ranks
from pipelines.train import driver as train
from pipelines.train.rendezvous import HorovodRendezvous

GAN = ["model.name=gan", "model.params={latent_dim: 8, generator_channels: [16, 8], discriminator_channels: [8, 16]}",
       "train.adam_betas=[0.5, 0.999]", "train.lr=0.0005"]


def test_a_horovod_gan_step_averages_each_optimizers_gradients_once_like_one_process(spark):
    result = run_ranks(spark, "strategy_workers:gan_step_entry", {}, num_workers=2, rendezvous=HorovodRendezvous())
    figures, grads = w.gan_reference()
    assert result["optimizers"] == ["discriminator", "generator"]
    assert set(result["grads"]) == set(grads)
    for name, grad in grads.items():
        assert result["grads"][name] == pytest.approx(grad.flatten().tolist(), abs=1e-5), name
    # rank 0 saw half the batch: its phase losses are its half's, both finite and positive
    assert result["figures"]["loss"] == pytest.approx(result["figures"]["discriminator_loss"]
                                                      + result["figures"]["generator_loss"])


def _weights(run_dir):
    return torch.load(Path(run_dir) / "model" / "model.pt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_a_gan_killed_mid_run_resumes_to_the_weights_of_an_uninterrupted_run(spark, digits_workdir):
    """Same seed and ranks: the same weights; a rank killed in epoch 3 and the stage retried from the
    epoch-2 checkpoint (both networks, both Adam states) ends with those weights too."""
    pids: dict[int, int] = {}
    killed = []

    def kill_rank_1_in_epoch_3(event):
        if isinstance(event, events.Started):
            pids[event.rank] = event.pid
        if isinstance(event, events.StepProgress) and event.epoch == 3 and not killed:
            os.kill(pids[1], signal.SIGKILL)
            killed.append(pids[1])

    clean = make_config(digits_workdir, "run_id=gan-clean", "train.epochs=4", *GAN)
    history = train.main(spark, clean).history
    assert {"discriminator_loss", "generator_loss", "d_real", "d_fake"} <= set(history[-1].metrics)
    killed_config = make_config(digits_workdir, "run_id=gan-killed", "train.epochs=4", "train.max_attempts=2",
                                "train.failure_timeout_s=30", *GAN)
    assert train.main(spark, killed_config, on_event=kill_rank_1_in_epoch_3).epochs_completed == 4
    assert killed, "the test never killed a rank"
    resumed, uninterrupted = _weights(killed_config.run_dir()), _weights(clean.run_dir())
    assert any(k.startswith("generator.") for k in resumed) and any(k.startswith("discriminator.") for k in resumed)
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
