"""The storage tests use the session's S3 server (``s3``, tests/conftest.py)."""
from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_storage_options() -> Iterator[None]:
    """Tests that set the driver's storage options must not leak them into the next test (tests use
    ``storage.using_options`` blocks otherwise, which put back what was there)."""
    from pipelines.storage import fs

    driver = fs._driver_options
    yield
    fs._driver_options = driver
