"""Which device a rank or a scoring task runs on, and how batches get there (torch only).

One rule decides it (:func:`resolve_device`), from inputs the caller reads and passes in, so the
rule is tested without Spark or a GPU:

1. the GPUs Spark gave the task (``TaskContext.resources()["gpu"]``); the barrier task restricts
   the rank process to them with ``CUDA_VISIBLE_DEVICES``, so the rank's GPU is ``cuda:0``;
2. else GPUs this process can see (one multi-GPU node in ``local[N]``): ``local_rank`` modulo
   their count;
3. else the CPU.

``train.device`` / ``infer.device``: ``auto`` follows the rule; ``cpu`` skips the GPUs; ``cuda``
follows it but fails when it ends on the CPU. Nothing here imports Spark, Horovod or Petastorm,
and torch only when a function needs it: the barrier task (a Spark Python worker) uses
:func:`gpu_environment` without loading torch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ConfigError):
    """The requested device cannot be had here; the message names the setting and what to do."""


@dataclass(frozen=True)
class DeviceChoice:
    """Where one rank or task runs, and why (for logs and ``summary.json``)."""

    device: str  # torch device string: "cpu" or "cuda:N"
    reason: str  # how the rule chose it, e.g. "Spark task GPU 3"
    gpu: str = ""  # the GPU's address as Spark or the node names it ("" on CPU)

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def describe(self) -> dict[str, str]:
        """Plain data for events and ``summary.json``."""
        return {"device": self.device, "gpu": self.gpu, "reason": self.reason}


def resolve_device(requested: str, spark_gpus: Sequence[str], visible_count: int, local_rank: int,
                   key: str = "train.device", restricted: bool = True) -> DeviceChoice:
    """The device for a rank (pure: every input is passed in).

    ``spark_gpus``: the GPU addresses Spark gave the task (empty without GPU scheduling);
    ``visible_count``: CUDA devices this process sees (``torch.cuda.device_count()``);
    ``restricted``: whether ``CUDA_VISIBLE_DEVICES`` was narrowed to ``spark_gpus`` (a rank process:
    yes, so its GPU is ``cuda:0``; a scoring task in a shared Python worker: no, so the address is
    the device index). ``key`` is the config key named in errors.
    """
    if requested not in DEVICES:
        raise DeviceError(f"config key {key!r} = {requested!r} must be one of {', '.join(DEVICES)}", key=key)
    if requested == "cpu":
        return DeviceChoice("cpu", f"{key}=cpu")
    if spark_gpus:
        gpu = spark_gpus[0]  # one GPU per task: more (gpu.amount > 1) would need a model-parallel rank
        if visible_count > 0:
            if not restricted and not gpu.isdigit():
                raise DeviceError(f"Spark gave the task GPU {gpu!r}, which is not a device index: use a discovery "
                                  "script that reports nvidia-smi's indices (spark-conf/getGpusResources.sh)", key=key)
            index = 0 if restricted else int(gpu)
            return DeviceChoice(f"cuda:{index}", f"Spark task GPU {gpu}", gpu)
        why = f"Spark gave the task GPU {gpu} but torch sees no CUDA device ({_torch_build()})"
    elif visible_count > 0:
        index = local_rank % visible_count
        return DeviceChoice(f"cuda:{index}", f"local rank {local_rank} of {visible_count} visible GPU(s)", str(index))
    else:
        why = "Spark gave the task no GPU (spark.task.resource.gpu.amount unset) and torch sees no CUDA device"
    if requested == "cuda":
        raise DeviceError(f"config key {key!r} = 'cuda' but there is no GPU here: {why}. Install a CUDA build of "
                          f"torch and schedule GPUs (spark-conf/spark-defaults.gpu.conf), or set {key}=auto "
                          f"(GPU when there is one, else CPU) or {key}=cpu", key=key)
    return DeviceChoice("cpu", f"{key}=auto: {why}")


def _torch_build() -> str:
    import torch

    return f"torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}"


def gpu_environment(addresses: Sequence[str]) -> dict[str, str]:
    """Environment for a rank process given Spark GPUs: it sees only those (its GPU is then ``cuda:0``)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(addresses)} if addresses else {}


def visible_gpus() -> int:
    """CUDA devices this process can use (0 with a CPU build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def activate(choice: DeviceChoice) -> torch.device:
    """Make ``choice`` this process's current device (NCCL and ``torch.cuda`` calls use it)."""
    import torch

    device = choice.torch_device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def backend_for(device: torch.device) -> str:
    """torch.distributed backend: NCCL between GPUs, Gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``batch`` on ``device``. CPU: the very same batch, untouched. CUDA: each tensor pinned (unless
    the loader already pinned it) and copied ``non_blocking``, so the copy overlaps compute."""
    if device.type != "cuda":
        return batch
    return {k: pin(v).to(device, non_blocking=True) for k, v in batch.items()}


def pin(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in page-locked memory (an asynchronous host-to-GPU copy needs it)."""
    return tensor if tensor.is_pinned() else tensor.pin_memory()


def pin_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of ``batch`` pinned (the loader does it in its thread when the target is a GPU)."""
    return {k: pin(v) for k, v in batch.items()}


def exact_fp32() -> None:
    """fp32 means fp32: no TF32 in matmuls and convolutions (cuDNN allows it by default), so GPU
    results match the CPU's to 1e-4."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
