"""The loader's pinned-memory path, with the Parquet reader replaced by in-memory chunks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.artifact import Normalizer
from pipelines.dataset import Normalization, SplitFiles
from pipelines.train import loader


@pytest.fixture
def chunks(monkeypatch):
    def passes(split, rank, size, seed, workers):
        while True:
            yield np.arange(40 * 4, dtype=np.float32).reshape(40, 4), np.arange(40, dtype=np.int64)

    monkeypatch.setattr(loader, "_shard_passes", passes)


@pytest.fixture
def pinned(monkeypatch):
    calls: list[torch.Size] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append(self.shape) or self)
    return calls


def _batches(pin: bool) -> list[dict[str, torch.Tensor]]:
    normalize = Normalizer.from_stats(Normalization("global", [0.0], [1.0]), [4])
    return list(loader.epoch_batches(SplitFiles(["/unused"], [[40]]), loader.BatchOrder(batch_size=8, steps=3, seed=0),
                                     rank=0, size=1, normalize=normalize, pin=pin))


def test_batches_for_a_cpu_rank_are_never_pinned(chunks, pinned):
    batches = _batches(pin=False)
    assert len(batches) == 3 and pinned == []
    assert torch.equal(batches[1]["label"], torch.arange(8, 16))


def test_batches_for_a_gpu_rank_are_pinned_in_the_read_ahead_thread(chunks, pinned):
    batches = _batches(pin=True)
    assert pinned == [torch.Size([8, 4]), torch.Size([8])] * 3
    assert torch.equal(batches[2]["features"][0], torch.arange(64, 68, dtype=torch.float32))
