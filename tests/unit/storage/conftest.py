"""The storage tests use the session's S3 server (``s3``, tests/conftest.py)."""
from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_storage_options() -> Iterator[None]:
    """Tests that change storage options must not leak them into the next test."""
    from pipelines import storage

    before = storage.current_options()
    yield
    if storage.current_options() != before:
        storage.set_options(before)
