"""Training checkpoints: one atomic file per position (epoch end, or N steps into an epoch), newest two kept.

    epoch-0003.pt              after 3 whole epochs
    epoch-0003.step-000050.pt  after 3 whole epochs and 50 steps of the 4th (train.checkpoint_every_steps)
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch

KEEP = 2
_NAME = re.compile(r"epoch-(\d+)(?:\.step-(\d+))?\.pt")


def checkpoint_name(epoch: int, step: int = 0) -> str:
    """File name of the checkpoint after ``epoch`` whole epochs and ``step`` steps of the next."""
    return f"epoch-{epoch:04d}" + (f".step-{step:06d}" if step else "") + ".pt"


def _position(path: Path) -> tuple[int, int]:
    found = _NAME.fullmatch(path.name)
    return (int(found.group(1)), int(found.group(2) or 0)) if found else (-1, -1)


def _checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest position first."""
    found = [p for p in folder.glob("epoch-*.pt") if _NAME.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, key=_position)


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write the checkpoint for ``state['epoch']`` (and ``state['step']``) atomically; prune older ones."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(state["epoch"], state.get("step", 0))
    tmp = folder / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in _checkpoints(folder)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: Path, manifest_hash: str) -> dict[str, Any] | None:
    """The newest checkpoint in ``folder``, or None. Refuses one made on other data."""
    found = _checkpoints(folder)
    if not found:
        return None
    state = torch.load(found[-1], map_location="cpu", weights_only=True)
    if state.get("manifest_hash") != manifest_hash:
        raise ValueError(f"checkpoint {found[-1]} was made on a different dataset (manifest hash "
                         f"{state.get('manifest_hash')} != {manifest_hash}): use a new run_id or delete "
                         f"{folder} to start over")
    return state
