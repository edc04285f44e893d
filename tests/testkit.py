"""Helpers shared by test modules (import as ``from testkit import ...``; ``tests/`` is on the path).

Kept out of ``conftest.py`` because several folders have a conftest and only one can be
imported under that name.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DIGITS_DIR = REPO_ROOT / "data" / "digits"


def make_config(workdir: Path, *overrides: str):
    """A validated config for the bundled digits in ``workdir`` (short defaults for tests)."""
    from pipelines.config import load_config
    from pipelines.tracking import TRACKING_OFF

    return load_config(REPO_ROOT / "pipelines" / "configs" / "digits_cnn.yaml",
                       [f"workdir={workdir}", "master=local[2]", "run_id=test", *TRACKING_OFF, *overrides])
