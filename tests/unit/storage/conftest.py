"""Fixtures for the storage tests: a real moto S3 server for the whole session."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from s3server import S3Server, s3_server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """moto's S3 server with the AWS variables set and dlpipe's storage options pointing at it (both restored)."""
    from pipelines import storage

    with s3_server() as server:
        saved_env = {k: os.environ.get(k) for k in server.env}
        saved_options = storage.current_options()
        os.environ.update(server.env)
        storage.set_options(storage.StorageOptions(s3_endpoint=server.endpoint))
        try:
            yield server
        finally:
            storage.set_options(saved_options)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(autouse=True)
def _restore_storage_options() -> Iterator[None]:
    """Tests that change storage options must not leak them into the next test."""
    from pipelines import storage

    before = storage.current_options()
    yield
    if storage.current_options() != before:
        storage.set_options(before)
