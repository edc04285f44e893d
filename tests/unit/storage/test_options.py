"""Storage options are explicit (issue 34): a Spark task or a rank uses its job's options inside a
``using_options`` block, which puts back what was there before, so a task that forgot its block fails
naming the fix instead of using the defaults or an earlier task's options in a reused worker."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

from pipelines import storage
from pipelines.storage import StorageError, StorageOptions, fs
from testkit import REPO_ROOT

FIX = r"in `with pipelines\.storage\.using_options\(<the job's StorageOptions>\):`"
A = StorageOptions(s3_endpoint="http://127.0.0.1:9", s3_region="eu-west-1")
B = StorageOptions(s3_endpoint="http://127.0.0.1:9", s3_region="us-west-2")


@pytest.fixture
def in_task(monkeypatch) -> list[int]:
    """This process runs Spark task attempt ``in_task[0]`` (as ``fs._spark_task`` finds with pyspark's
    TaskContext, which is process-wide: every thread sees it)."""
    attempt = [1]
    monkeypatch.setattr(fs, "_spark_task", lambda: attempt[0])
    return attempt


def test_a_task_uses_its_options_inside_its_block_and_fails_naming_the_fix_outside(in_task):
    with pytest.raises(StorageError, match=FIX):
        storage.current_options()
    with storage.using_options(A) as used:
        assert used is A and storage.current_options() is A
        assert storage.filesystem("s3://bkt/x")[0].region == "eu-west-1"
    with pytest.raises(StorageError, match="a Spark task reached a store outside its job's storage options"):
        storage.exists("s3://bkt/x")  # a remote store call after the block: the clear error, not A
    assert storage.exists("/nonexistent/local/file") is False  # local files need no options


def test_nested_blocks_restore_the_outer_options_even_when_the_inner_one_raises(in_task):
    with storage.using_options(A):
        with pytest.raises(RuntimeError), storage.using_options(B):
            assert storage.current_options() is B
            raise RuntimeError("the task failed")
        assert storage.current_options() is A
        with storage.using_options(A):  # an equal block inside: two blocks, the outer still open after
            pass
        assert storage.current_options() is A
    with pytest.raises(StorageError, match=FIX):
        storage.current_options()


def test_threads_started_in_a_block_read_its_options_and_lose_them_when_it_ends(in_task):
    """Process-wide, not per thread: a loader's read-ahead thread reads with its task's options; one that
    outlives the block gets the clear error, not stale options."""
    seen: list[object] = []
    block_ended = threading.Event()

    def read(wait: bool) -> None:
        if wait:
            block_ended.wait(10)
        try:
            seen.append(storage.current_options())
        except StorageError as e:
            seen.append(str(e))

    late = threading.Thread(target=read, args=(True,))
    with storage.using_options(A):
        during = threading.Thread(target=read, args=(False,))
        during.start()
        during.join()
        late.start()
    block_ended.set()
    late.join()
    assert seen[0] is A
    assert isinstance(seen[1], str) and "outside its job's storage options" in seen[1]


def test_blocks_on_two_threads_must_agree(in_task):
    outcome: list[str] = []

    def other_thread() -> None:
        with storage.using_options(A):  # the same options: fine
            outcome.append("same ok")
        try:
            with storage.using_options(B):
                outcome.append("other entered")
        except StorageError as e:
            outcome.append(str(e))

    with storage.using_options(A):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert storage.current_options() is A
    assert outcome == ["same ok", "another thread of this process uses other storage options: they are "
                       "process-wide (read-ahead threads share them), so run jobs with other options in another "
                       "process"]


def test_a_block_an_earlier_task_left_open_is_not_the_next_tasks(in_task):
    """A reused worker: task 1's generator was never closed (its block still open); task 2 forgot its
    block, so it fails instead of using task 1's options; with its own block it gets its own."""

    def task_body() -> object:
        with storage.using_options(A):
            yield storage.current_options()

    before = fs._scopes
    first = task_body()
    assert next(first) is A
    in_task[0] = 2
    with pytest.raises(StorageError, match=FIX):
        storage.current_options()
    with storage.using_options(B):
        assert storage.current_options() is B
    with pytest.raises(StorageError, match=FIX):
        storage.current_options()
    assert fs._scopes == before  # task 2's block dropped task 1's
    first.close()


def test_the_driver_sets_its_options_once_and_a_block_wins_while_it_lasts(monkeypatch):
    monkeypatch.setattr(fs, "_scopes", ())  # outside the session's S3 server block
    monkeypatch.setattr(fs, "_spark_task", lambda: None)
    storage.set_driver_options(A)
    assert storage.current_options() is A  # what the driver's jobs ship to tasks and ranks
    with storage.using_options(B):
        assert storage.current_options() is B
    assert storage.current_options() is A
    with pytest.raises(TypeError, match="set_driver_options wants a StorageOptions, got str"):
        storage.set_driver_options("s3_endpoint=x")
    monkeypatch.setattr(fs, "_spark_task", lambda: 5)
    with pytest.raises(StorageError, match="set_driver_options was called in a Spark task: a task uses `with"):
        storage.set_driver_options(B)
    with pytest.raises(StorageError, match=FIX):
        storage.current_options()  # a task never falls back to the driver's options


WORKER = textwrap.dedent("""
    import json
    from pyspark import TaskContext
    from pipelines import storage

    def task(attempt, options):
        # what pyspark's worker does before each task it runs in this (reused) process
        TaskContext._getOrCreate()._taskAttemptId = attempt
        try:
            if options is None:
                return repr(storage.current_options())
            with storage.using_options(options):
                return repr(storage.current_options())
        except storage.StorageError as e:
            return str(e)

    before = repr(storage.current_options())  # not a task yet: the defaults
    job_a = storage.StorageOptions(s3_endpoint="http://a:1", s3_region="eu-west-1")
    print(json.dumps([before, task(1, job_a), task(2, None)]))
""")


def test_a_reused_worker_process_gives_a_task_that_forgot_its_block_the_error_not_the_last_tasks_options():
    """A fresh process with pyspark's real TaskContext, as a Spark Python worker runs two tasks."""
    done = subprocess.run([sys.executable, "-c", WORKER], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    before, first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == repr(StorageOptions())
    assert first == repr(StorageOptions(s3_endpoint="http://a:1", s3_region="eu-west-1"))
    assert second == ("a Spark task reached a store outside its job's storage options: the task body must run in "
                      "`with pipelines.storage.using_options(<the job's StorageOptions>):` (a dlpipe bug)")


def test_a_rank_process_has_no_driver_options_outside_its_block(monkeypatch):
    monkeypatch.setattr(fs, "_scopes", ())  # outside the session's S3 server block
    monkeypatch.setattr(fs, "_spark_task", lambda: None)  # a rank imports no pyspark
    monkeypatch.setattr(fs, "_worker_process", False)
    storage.set_driver_options(A)
    storage.mark_worker_process()  # what pipelines.launcher.rank.main does first
    with pytest.raises(StorageError, match="a rank process reached a store outside its job's storage options"):
        storage.current_options()
    with storage.using_options(B):
        assert storage.current_options() is B
