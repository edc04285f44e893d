"""train.precision: autocast chosen once, fp16's loss scaling, and what the config refuses."""
from __future__ import annotations

import copy

import pytest
import torch

import models
from pipelines.config import ConfigError, from_dict
from pipelines.train import step
from pipelines.train.precision import Precision, PrecisionError

CPU = torch.device("cpu")


def _model_and_batch():
    torch.manual_seed(0)
    model = models.build("cnn", feature_shape=(1, 8, 8), num_classes=10, dropout=0.0)
    g = torch.Generator().manual_seed(1)
    return model, {"features": torch.randn(16, 1, 8, 8, generator=g), "label": torch.randint(0, 10, (16,), generator=g)}


def test_fp16_on_a_cpu_is_refused_naming_the_key_and_the_alternative():
    with pytest.raises(PrecisionError, match=r"'train.precision' = 'fp16' needs a GPU.*train.precision=bf16"):
        Precision("fp16", CPU)


def test_bf16_on_a_gpu_without_bfloat16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(PrecisionError, match=r"'train.precision' = 'bf16' but the GPU .* use fp16 or fp32"):
        Precision("bf16", torch.device("cuda:0"))


def test_an_fp32_step_is_the_plain_step():
    model, batch = _model_and_batch()
    plain = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    figures = step.train_step(model.loss, opt, Precision("fp32", CPU), batch)
    plain_opt.zero_grad()
    loss, metrics = plain.loss(batch)
    loss.backward()
    plain_opt.step()
    assert figures == {"loss": loss.item(), "accuracy": metrics["accuracy"].item()}
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_bf16_autocasts_the_forward_on_cpu_and_keeps_fp32_parameters():
    precision = Precision("bf16", CPU)
    assert precision.scaler is None
    with precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    model, batch = _model_and_batch()
    before = copy.deepcopy(model)
    figures = step.train_step(model.loss, torch.optim.SGD(model.parameters(), lr=0.1), precision, batch)
    fp32 = step.eval_step(before.loss, Precision("fp32", CPU), batch)
    assert figures["loss"] == pytest.approx(fp32["loss"], rel=2e-2) and figures["loss"] != fp32["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters()))


class _RecordingScaler:
    """Stands in for the GPU's GradScaler: records the order of calls."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def scale(self, loss):
        self.calls.append("scale")
        return loss * 8

    def unscale_(self, optimizer):
        self.calls.append("unscale")

    def step(self, optimizer):
        self.calls.append("step")

    def update(self):
        self.calls.append("update")


def test_fp16_scales_the_loss_and_averages_gradients_before_the_overflow_check():
    calls: list[str] = []
    precision = Precision("fp32", CPU)
    precision.scaler = _RecordingScaler(calls)  # fp16's path, without a GPU

    class Skip:
        def __enter__(self):
            calls.append("enter-skip")

        def __exit__(self, *exc):
            calls.append("exit-skip")

    def synchronize():
        calls.append("synchronize")
        return Skip()

    model, batch = _model_and_batch()
    step.train_step(model.loss, torch.optim.SGD(model.parameters(), lr=0.1), precision, batch, synchronize)
    assert calls == ["scale", "synchronize", "unscale", "enter-skip", "step", "exit-skip", "update"]


@pytest.mark.parametrize("overrides, master, message", [
    ({"device": "cpu"}, "", "needs a GPU but train.device='cpu'"),
    ({"strategy": "fsdp"}, "", "not supported with train.strategy=fsdp"),
    ({"strategy": "pipeline"}, "", "not supported with train.strategy=pipeline"),
    ({}, "local[2]", r"the ranks of master=local\[2\] run on this machine, which has none"),  # no GPU here
])
def test_validation_refuses_fp16_where_it_cannot_run(overrides, master, message):
    from pipelines.preflight import validate

    config = from_dict({"train": {"precision": "fp16", **overrides}})
    with pytest.raises(ConfigError, match=message) as err:
        validate(config, "train", master)
    assert err.value.key == "train.precision"


@pytest.mark.parametrize("strategy", ["horovod", "ddp"])
def test_fp16_is_accepted_for_the_replicated_strategies_on_a_cluster(strategy):
    from pipelines.preflight import validate

    config = from_dict({"train": {"precision": "fp16", "strategy": strategy}})
    validate(config, "train", master="spark://10.0.0.1:7077")  # only the ranks can tell: they report it
    assert config.train.precision == "fp16"
