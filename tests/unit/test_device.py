"""Device resolution with injected inputs (Spark GPUs, visible GPUs, local rank) and the batch path."""
from __future__ import annotations

import pytest
import torch

from pipelines.device import (
    DeviceChoice, DeviceError, backend_for, gpu_environment, resolve_device, to_device,
)


@pytest.mark.parametrize("requested", ["auto", "cuda"])
def test_a_spark_gpu_is_the_ranks_only_visible_device(requested):
    choice = resolve_device(requested, ["3"], visible_count=1, local_rank=1)
    assert choice == DeviceChoice("cuda:0", "Spark task GPU 3", "3")  # CUDA_VISIBLE_DEVICES=3: cuda:0 is GPU 3


def test_a_scoring_task_in_an_unrestricted_worker_uses_the_address_as_index():
    assert resolve_device("auto", ["2"], visible_count=4, local_rank=0, restricted=False).device == "cuda:2"


def test_a_gpu_address_that_is_no_index_is_refused_where_it_would_be_used_as_one():
    with pytest.raises(DeviceError, match=r"GPU 'GPU-8f3a', which is not a device index.*getGpusResources.sh"):
        resolve_device("auto", ["GPU-8f3a"], visible_count=1, local_rank=0, restricted=False)
    assert resolve_device("auto", ["GPU-8f3a"], 1, 0).device == "cuda:0"  # a rank: CUDA_VISIBLE_DEVICES takes UUIDs


@pytest.mark.parametrize("local_rank, visible, expected", [(0, 2, "cuda:0"), (1, 2, "cuda:1"), (2, 2, "cuda:0"),
                                                            (3, 1, "cuda:0"), (5, 4, "cuda:1")])
def test_without_spark_gpus_ranks_take_local_rank_modulo_the_visible_gpus(local_rank, visible, expected):
    choice = resolve_device("auto", [], visible_count=visible, local_rank=local_rank)
    assert choice.device == expected
    assert choice.reason == f"local rank {local_rank} of {visible} visible GPU(s)"
    assert choice.gpu == expected.split(":")[1]


def test_auto_without_any_gpu_is_the_cpu_and_says_why():
    choice = resolve_device("auto", [], visible_count=0, local_rank=0)
    assert choice.device == "cpu" and choice.gpu == "" and not choice.is_cuda
    assert "spark.task.resource.gpu.amount unset" in choice.reason and "no CUDA device" in choice.reason


def test_auto_with_a_spark_gpu_torch_cannot_see_falls_back_to_the_cpu():
    choice = resolve_device("auto", ["0"], visible_count=0, local_rank=0)
    assert choice.device == "cpu"
    assert "Spark gave the task GPU 0 but torch sees no CUDA device" in choice.reason


@pytest.mark.parametrize("spark_gpus, visible", [([], 4), (["1"], 1)])
def test_cpu_requested_never_takes_a_gpu(spark_gpus, visible):
    assert resolve_device("cpu", spark_gpus, visible, 0) == DeviceChoice("cpu", "train.device=cpu")


@pytest.mark.parametrize("spark_gpus", [[], ["0"]])
def test_cuda_requested_with_no_gpu_fails_naming_the_key_and_the_fix(spark_gpus):
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda", spark_gpus, visible_count=0, local_rank=0, key="infer.device")
    message = str(e.value)
    assert message.startswith("config key 'infer.device' = 'cuda' but there is no GPU here")
    assert "CUDA build of torch" in message and "infer.device=auto" in message and "infer.device=cpu" in message


def test_an_unknown_request_is_refused():
    with pytest.raises(DeviceError, match="must be one of auto, cpu, cuda"):
        resolve_device("gpu", [], 0, 0)


@pytest.mark.parametrize("key", ["train.device", "infer.device"])
def test_the_config_names_a_bad_device_key(key):
    from pipelines.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=rf"config key '{key}' = 'gpu' must be one of auto, cpu, cuda"):
        load_config(overrides=[f"{key}=gpu"])


def test_the_rank_environment_shows_only_the_tasks_gpus():
    assert gpu_environment([]) == {}
    assert gpu_environment(["1", "3"]) == {"CUDA_VISIBLE_DEVICES": "1,3"}


def test_the_backend_is_nccl_on_gpus_and_gloo_on_cpus():
    assert backend_for(torch.device("cuda:0")) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo"


def _batch() -> dict[str, torch.Tensor]:
    return {"features": torch.ones(4, 1, 8, 8), "label": torch.arange(4)}


def test_on_cpu_the_batch_is_returned_untouched_and_nothing_is_pinned(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self) or self)
    batch = _batch()
    assert to_device(batch, torch.device("cpu")) is batch
    assert pinned == []


def test_to_a_gpu_each_tensor_is_pinned_then_copied_non_blocking(monkeypatch):
    pinned, copies = [], []
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, non_blocking=False: copies.append(
        (str(device), non_blocking)) or self)
    out = to_device(_batch(), torch.device("cuda:1"))
    assert set(out) == {"features", "label"}
    assert pinned == [torch.Size([4, 1, 8, 8]), torch.Size([4])]
    assert copies == [("cuda:1", True), ("cuda:1", True)]


def test_an_already_pinned_tensor_is_not_pinned_again(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(1) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, non_blocking=False: self)
    to_device(_batch(), torch.device("cuda:0"))
    assert pinned == []
