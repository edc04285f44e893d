"""Storage options inside a Spark task: a task that reaches a store before setting its job's options
fails loudly instead of silently using the default endpoint and region (issue 34)."""
from __future__ import annotations

import pytest

from pipelines import storage
from pipelines.storage import fs


def test_a_spark_task_that_forgot_its_options_fails_naming_the_fix(monkeypatch):
    monkeypatch.setattr(fs, "_options_set", False)
    monkeypatch.setattr(fs, "_in_spark_task", lambda: True)
    with pytest.raises(storage.StorageError, match=r"set_options\(<the job's StorageOptions>\) first"):
        storage.current_options()
    with pytest.raises(storage.StorageError, match="before its job's storage options were set"):
        storage.exists("s3://dlpipe-bucket/any")  # a remote store call
    assert storage.exists("/nonexistent/local/file") is False  # local files need no options


def test_a_task_with_its_options_set_and_the_driver_use_them(monkeypatch):
    monkeypatch.setattr(fs, "_options_set", False)
    assert storage.current_options() == fs._options  # the driver (no Spark task): defaults are fine
    monkeypatch.setattr(fs, "_in_spark_task", lambda: True)
    options = storage.StorageOptions(s3_region="eu-west-1")
    previous = fs._options
    try:
        storage.set_options(options)
        assert storage.current_options() is options
    finally:
        storage.set_options(previous)
