"""Mixed precision (``train.precision``), chosen once per run: an autocast context and, for fp16,
a gradient scaler (torch only).

``fp32``: no autocast, exact fp32 (TF32 off, see ``pipelines.device.exact_fp32``). ``bf16``:
autocast to bfloat16 on GPU or CPU; it keeps fp32's exponent range, so no loss scaling.
``fp16``: autocast to float16 with a ``GradScaler`` (small gradients would underflow to 0);
GPU only: on a CPU it would be slower than fp32 and gain nothing (bf16 is the CPU's half type),
so it is refused with a message naming the key.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from pipelines.choices import PRECISION_NAMES, check_registry
from pipelines.device import exact_fp32
from pipelines.errors import ConfigError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
check_registry("train.precision", PRECISION_NAMES, tuple(PRECISIONS))


class PrecisionError(ConfigError):
    """The precision cannot run on the device; the message names ``train.precision``."""


class Precision:
    """Autocast and loss scaling for one run on ``device``."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in PRECISIONS:
            raise PrecisionError(f"config key 'train.precision' = {name!r} must be one of {', '.join(PRECISIONS)}",
                                 key="train.precision")
        if name == "fp16" and device.type != "cuda":
            raise PrecisionError(f"config key 'train.precision' = 'fp16' needs a GPU, but this rank runs on {device}: "
                                 "use train.precision=bf16 (autocast works on CPU) or fp32, or train on GPUs",
                                 key="train.precision")
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise PrecisionError(f"config key 'train.precision' = 'bf16' but the GPU of this rank ({device}) has no "
                                 "bfloat16 support (it needs compute capability 8.0 or newer): use fp16 or fp32",
                                 key="train.precision")
        self.name, self.device = name, device
        self.dtype = PRECISIONS[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        if name == "fp32":
            exact_fp32()

    def autocast(self) -> AbstractContextManager[object]:
        """The context a forward pass runs in."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled under fp16."""
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer,
             synchronize: Callable[[], AbstractContextManager[object]] | None = None) -> None:
        """``optimizer.step()``; under fp16 unscaled first and skipped when a gradient overflowed.

        ``synchronize``: for an optimizer that averages gradients inside ``step`` (Horovod), a
        function that averages them now and returns a context in which ``step`` must not do it
        again: every rank then sees the same gradients and so makes the same skip decision.
        """
        if self.scaler is None:
            optimizer.step()
            return
        context = synchronize() if synchronize else contextlib.nullcontext()
        self.scaler.unscale_(optimizer)
        with context:
            self.scaler.step(optimizer)
        self.scaler.update()
