"""Scoring on one device with torch alone: outputs, batching, rows per forward pass by device."""
from __future__ import annotations

import torch

import models
from pipelines.infer import predict


def test_score_equals_one_forward_whatever_the_batching():
    torch.manual_seed(0)
    model = predict.place(models.build("cnn", feature_shape=(1, 8, 8), num_classes=10), torch.device("cpu"))
    assert not model.training
    features = torch.randn(37, 1, 8, 8)
    whole = model.predict(features)
    parts = predict.score(model, features, batch_size=8)  # 5 forward passes, the last of 5 rows
    assert set(parts) == {"prediction", "probabilities"}
    assert torch.equal(parts["prediction"], whole["prediction"])
    torch.testing.assert_close(parts["probabilities"], whole["probabilities"], rtol=0, atol=1e-6)


def test_a_gpu_gets_its_own_rows_per_forward_pass():
    assert predict.forward_rows(torch.device("cpu"), batch_size=512, gpu_batch_size=4096) == 512
    assert predict.forward_rows(torch.device("cuda:1"), batch_size=512, gpu_batch_size=4096) == 4096
