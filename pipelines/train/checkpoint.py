"""Training checkpoints: one atomic file per epoch, the newest two kept."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

KEEP = 2


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write ``epoch-NNNN.pt`` atomically (temp file + rename) and prune older ones."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch-{state['epoch']:04d}.pt"
    tmp = folder / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(folder.glob("epoch-*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: Path, manifest_hash: str) -> dict[str, Any] | None:
    """The newest checkpoint in ``folder``, or None. Refuses one made on other data."""
    found = sorted(folder.glob("epoch-*.pt")) if folder.is_dir() else []
    if not found:
        return None
    state = torch.load(found[-1], map_location="cpu", weights_only=True)
    if state.get("manifest_hash") != manifest_hash:
        raise ValueError(f"checkpoint {found[-1]} was made on a different dataset (manifest hash "
                         f"{state.get('manifest_hash')} != {manifest_hash}): use a new run_id or delete "
                         f"{folder} to start over")
    return state
