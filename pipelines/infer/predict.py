"""Scoring a batch with a model on one device (torch only: the GPU check runs it without Spark).

``pipelines.infer.scoring`` (the Spark side) decides the device per task and calls :func:`score`;
``scripts/gpu_check.py`` calls it on a GPU and on the CPU and compares the outputs.
"""
from __future__ import annotations

import torch

from models import DlpipeModel
from pipelines.device import exact_fp32, to_device


def place(model: DlpipeModel, device: torch.device) -> DlpipeModel:
    """``model`` on ``device`` for inference, in exact fp32 (no TF32: outputs match the CPU's to 1e-4)."""
    if device.type == "cuda":
        exact_fp32()
    return model.to(device).eval()


def forward_rows(device: torch.device, batch_size: int, gpu_batch_size: int) -> int:
    """Rows per forward pass: a GPU is fed more rows at once (``infer.gpu_batch_size``) to keep it busy;
    on the CPU larger passes gain little and cost memory (``infer.batch_size``)."""
    return gpu_batch_size if device.type == "cuda" else batch_size


def score(model: DlpipeModel, features: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """``model``'s declared outputs for normalized ``features`` (rows, *feature_shape), ``batch_size``
    rows per forward pass on the model's device; the outputs come back on the CPU."""
    device = next(model.parameters()).device
    outputs: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            part = to_device({"features": features[start:start + batch_size]}, device)["features"]
            for name, value in model.predict(part).items():
                outputs.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(values) for name, values in outputs.items()}
