"""Publishing without rename: the commit object names what belongs (local disk here; S3 in tests/spark/storage)."""
from __future__ import annotations

import json

import pytest

from pipelines import storage
from pipelines.publish import COMMIT_FILE, committed_files, committed_folder, is_published, publishing, read_commit


def _names(folder) -> list[str]:
    """What a target holds, less the reader records of jobs that wrote or read it (``_readers/``)."""
    return sorted(p.name for p in folder.iterdir() if p.name != "_readers")


def test_a_publication_is_invisible_until_committed_and_a_rerun_replaces_it(tmp_path):
    final = tmp_path / "out"
    with publishing(str(final)) as attempt:
        folder = attempt.folder
        storage.write_text(storage.join(folder, "a.txt"), "first")
        assert not is_published(str(final)) and committed_files(str(final)) == []  # nothing visible while writing
    assert [storage.name(f) for f in committed_files(str(final))] == ["a.txt"]
    first = committed_folder(str(final))
    with publishing(str(final)) as attempt:
        folder = attempt.folder
        storage.write_text(storage.join(folder, "b.txt"), "second")
    assert [storage.name(f) for f in committed_files(str(final))] == ["b.txt"]  # replaced, not merged
    assert not storage.exists(first)  # the older attempt is removed
    assert _names(final) == [COMMIT_FILE, storage.name(committed_folder(str(final)))]  # nothing else left
    assert json.loads((final / COMMIT_FILE).read_text())["files"] == ["b.txt"]


def test_a_failed_write_leaves_the_previous_output_intact(tmp_path):
    final = tmp_path / "out"
    with publishing(str(final)) as attempt:
        folder = attempt.folder
        storage.write_text(storage.join(folder, "good.txt"), "kept")
    kept = read_commit(str(final))
    with pytest.raises(RuntimeError, match="midway"):
        with publishing(str(final)) as attempt:
            folder = attempt.folder
            storage.write_text(storage.join(folder, "half.txt"), "half")
            raise RuntimeError("failed midway")
    assert read_commit(str(final)) == kept and [storage.name(f) for f in committed_files(str(final))] == ["good.txt"]
    assert _names(final) == [COMMIT_FILE, kept.folder]  # the failed attempt is gone


def test_a_killed_attempt_stays_invisible_and_the_next_publication_removes_it(tmp_path):
    final = tmp_path / "out"
    killed = final / "a-20000101T000000-deadbeef"  # what a killed job leaves: an attempt nobody committed
    killed.mkdir(parents=True)
    (killed / "part-00000.parquet").write_text("half")
    assert committed_files(str(final)) == []
    with publishing(str(final)) as attempt:
        folder = attempt.folder
        storage.write_text(storage.join(folder, "part-00000.parquet"), "whole")
    assert not killed.exists()
    assert [storage.read_text(f) for f in committed_files(str(final))] == ["whole"]


def test_an_output_under_a_file_is_named_with_its_key(tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(storage.StorageError, match=r"infer.output=.*notes.txt/preds"):
        storage.check_location(str(tmp_path / "notes.txt" / "preds"), "infer.output")


def test_an_unwritable_location_is_named_even_for_root(tmp_path):
    with pytest.raises(storage.StorageError, match=r"workdir=/proc/dlpipe/work"):
        storage.check_location("/proc/dlpipe/work", "workdir")  # not writable whatever the user's permissions
    storage.check_location(str(tmp_path / "new" / "deeper"), "workdir")  # missing folders are fine: they will be made
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # the probe leaves nothing


def test_of_two_jobs_publishing_one_target_at_once_the_later_commit_is_refused_whole(tmp_path):
    """Job A starts, job B starts and commits first: A's commit would replace B's output with a
    commit made blind to it, so it is refused, A's attempt is removed, B's output stays whole."""
    from pipelines.publish import PublishConflict

    final = tmp_path / "out"
    with pytest.raises(PublishConflict, match="another job published it while this job was writing it"):
        with publishing(str(final)) as a_attempt:
            a_folder = a_attempt.folder
            storage.write_text(storage.join(a_folder, "a.txt"), "job A")
            with publishing(str(final)) as b_attempt:
                b_folder = b_attempt.folder
                storage.write_text(storage.join(b_folder, "b.txt"), "job B")
    assert [storage.name(f) for f in committed_files(str(final))] == ["b.txt"]
    assert not storage.exists(a_folder) and _names(final) == [COMMIT_FILE, storage.name(b_folder)]


def test_the_commit_names_exactly_the_files_the_tasks_reported(tmp_path):
    """A file a task did not report (a killed speculative task's leftover) is not committed; a
    reported file that is missing stops the publication with nothing published."""
    from pipelines.publish import PublishError

    final = tmp_path / "out"
    with publishing(str(final)) as attempt:
        for name in ("part-00000.parquet", "part-00001.parquet", "part-00007.parquet"):
            storage.write_text(storage.join(attempt.folder, name), name)
        attempt.report([storage.join(attempt.folder, "part-00000.parquet"),
                        storage.join(attempt.folder, "part-00001.parquet")])
    assert [storage.name(f) for f in committed_files(str(final))] == ["part-00000.parquet", "part-00001.parquet"]
    kept = read_commit(str(final))
    with pytest.raises(PublishError, match=r"1 file\(s\) the tasks reported writing are missing \(part-00003.parquet\)"):
        with publishing(str(final)) as attempt:
            attempt.report([storage.join(attempt.folder, "part-00003.parquet")])
    assert read_commit(str(final)) == kept


def test_another_jobs_attempt_still_being_written_is_never_removed(tmp_path):
    """Job A starts first and is still writing when job B commits: B's clean-up keeps A's attempt
    (registered while it writes); A's own commit is then refused as a conflict, not half-done."""
    from pipelines.publish import PublishConflict

    final = tmp_path / "out"
    with pytest.raises(PublishConflict):
        with publishing(str(final)) as a_attempt:
            storage.write_text(storage.join(a_attempt.folder, "part-00000.parquet"), "A, first half")
            with publishing(str(final)) as b_attempt:
                storage.write_text(storage.join(b_attempt.folder, "part-00000.parquet"), "B")
            assert storage.exists(storage.join(a_attempt.folder, "part-00000.parquet"))  # B left it alone
            storage.write_text(storage.join(a_attempt.folder, "part-00001.parquet"), "A, second half")
    assert [storage.read_text(f) for f in committed_files(str(final))] == ["B"]


def test_an_output_with_attempt_folders_but_no_commit_is_refused_as_input(tmp_path):
    from pipelines.errors import ConfigError
    from pipelines.publish import check_committed

    killed = tmp_path / "generated"
    (killed / "a-20261207T000000.000000001-deadbeef").mkdir(parents=True)
    (killed / "a-20261207T000000.000000001-deadbeef" / "part-00000.parquet").write_text("half")
    with pytest.raises(ConfigError, match=r"etl.source.path=.*generated holds 1 uncommitted dlpipe attempt folder\(s\) "
                                          r"\(a-20261207T000000.000000001-deadbeef\) and no _commit.json"):
        check_committed(str(killed), "etl.source.path")
    check_committed(str(tmp_path), "etl.source.path")  # a plain folder of files is fine
