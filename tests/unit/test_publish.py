"""Atomic publication (pure filesystem logic, no Spark)."""
from __future__ import annotations

import json

import pytest

from pipelines.publish import SUCCESS, atomic_dir, is_published, write_json_atomic


def test_atomic_dir_publishes_with_success_marker_and_replaces_the_old_output(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("first")
        assert not final.exists()  # nothing visible while writing
    assert is_published(final) and (final / "a.txt").read_text() == "first"
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == [SUCCESS, "b.txt"]  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old folders left


def test_a_failed_write_leaves_the_previous_output_intact(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "good.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("failed midway")
    assert sorted(p.name for p in final.iterdir()) == [SUCCESS, "good.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_write_json_atomic_round_trips_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_an_output_under_a_file_is_named_with_its_key(tmp_path):
    from pipelines.publish import OutputError, check_writable

    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(OutputError, match=r"cannot create .*notes.txt/preds \(under infer.output\): .*notes.txt is a file, not a folder"):
        check_writable(tmp_path / "notes.txt" / "preds", "infer.output")


def test_an_unwritable_location_is_named_even_for_root(tmp_path):
    from pipelines.publish import OutputError, check_writable

    with pytest.raises(OutputError, match=r"cannot create /proc/dlpipe/work \(under workdir\): cannot write in /proc"):
        check_writable("/proc/dlpipe/work", "workdir")  # not writable whatever the user's permissions
    check_writable(tmp_path / "new" / "deeper", "workdir")  # missing folders are fine: they will be made
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # the probe leaves nothing
