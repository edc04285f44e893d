"""Pure helpers of the launcher: the rank environment, exit descriptions, event lines."""
from __future__ import annotations

import os
import signal

import pytest

from pipelines.launcher.protocol import TaskSpec, decode_event, encode_event
from pipelines.launcher.task import describe_exit, rank_environment

ASSIGNMENT = {"rank": 1, "size": 2, "local_rank": 1, "local_size": 2, "cross_rank": 0, "cross_size": 1,
              "hostname": "127.0.0.1", "rendezvous_addr": "127.0.0.1", "rendezvous_port": 4321,
              "gloo_iface": "lo", "attempt": 2}


def _spec(**extra) -> TaskSpec:
    return TaskSpec(entry="m:f", payload={}, num_workers=2, coordinator_host="127.0.0.1", coordinator_port=1,
                    start_timeout_s=30, failure_timeout_s=90, **extra)


def test_rank_environment_holds_horovods_gloo_variables_and_the_threads():
    env = rank_environment(_spec(), ASSIGNMENT, threads=3)
    expected = {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": "127.0.0.1", "HOROVOD_GLOO_RENDEZVOUS_PORT": "4321",
        "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_GLOO_IFACE": "lo",
        "HOROVOD_HOSTNAME": "127.0.0.1", "HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1",
        "HOROVOD_LOCAL_SIZE": "2", "HOROVOD_CROSS_RANK": "0", "HOROVOD_CROSS_SIZE": "1",
        "HOROVOD_GLOO_TIMEOUT_SECONDS": "90", "HOROVOD_STALL_CHECK_TIME_SECONDS": "45",
        "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "90", "DLPIPE_STALL_TIMEOUT_S": "90",
        "DLPIPE_RANK_THREADS": "3", "OMP_NUM_THREADS": "3", "DLPIPE_ATTEMPT": "2",
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
    }
    assert {k: env[k] for k in expected} == expected
    assert "DLPIPE_STORE_ADDR" not in env


def test_a_torch_rendezvous_gets_the_drivers_store_and_no_horovod_variables():
    env = rank_environment(_spec(), {**ASSIGNMENT, "rendezvous": "torch", "rendezvous_port": 5555}, threads=1)
    assert (env["DLPIPE_STORE_ADDR"], env["DLPIPE_STORE_PORT"], env["GLOO_SOCKET_IFNAME"]) == ("127.0.0.1", "5555", "lo")
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("1", "2", "1")
    assert not [k for k in env if k.startswith("HOROVOD_") and k not in os.environ]


def test_extra_env_wins_over_the_defaults():
    env = rank_environment(_spec(extra_env={"HOROVOD_CYCLE_TIME": "5", "OMP_NUM_THREADS": "1"}), ASSIGNMENT, 3)
    assert env["HOROVOD_CYCLE_TIME"] == "5" and env["OMP_NUM_THREADS"] == "1"


def test_a_task_with_spark_gpus_shows_its_rank_only_those(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # what the executor itself may see
    env = rank_environment(_spec(), ASSIGNMENT, threads=1, gpus=("2",))
    assert (env["CUDA_VISIBLE_DEVICES"], env["DLPIPE_TASK_GPUS"]) == ("2", "2")


def test_a_task_without_spark_gpus_leaves_the_workers_gpus_and_no_stale_task_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # one multi-GPU node, no Spark GPU scheduling
    monkeypatch.setenv("DLPIPE_TASK_GPUS", "7")  # left over in a reused worker: must not reach the rank
    env = rank_environment(_spec(), ASSIGNMENT, threads=1)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and "DLPIPE_TASK_GPUS" not in env


def test_describe_exit_names_the_code_or_the_signal():
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(-99) == "was killed by signal 99"


def test_event_lines_round_trip_and_log_lines_are_not_events():
    line = encode_event("epoch", {"rank": 0, "loss": 0.5})
    assert decode_event(line) == {"kind": "epoch", "rank": 0, "loss": 0.5}
    assert decode_event("epoch 1 done") is None
    assert decode_event(line[:-3]) is None  # a cut line is a log line, not a crash


def test_only_the_launch_secret_answers_the_challenge():
    from pipelines.launcher.protocol import answer, is_answer, new_challenge, new_secret

    secret, challenge = new_secret(), new_challenge()
    assert new_secret() != secret  # fresh per launch
    assert is_answer(secret, challenge, answer(secret, challenge))
    assert not is_answer(secret, challenge, answer(new_secret(), challenge))
    assert not is_answer(secret, challenge, None) and not is_answer(secret, challenge, 42)


def test_the_coordinator_parses_only_whole_json_objects():
    from pipelines.launcher.driver import _parse

    assert _parse(b'{"type": "log", "rank": 0}\n') == {"type": "log", "rank": 0}
    for bad in (b'{"type": "log"', b"not json\n", b"[1, 2]\n", b"\xff\xfe\n", b""):
        assert _parse(bad) is None, bad


# What Spark 3.5 raises through Py4J when an executor dies under a barrier task (shortened).
LOST_EXECUTOR = (
    "An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.\n"
    ": org.apache.spark.SparkException: Job aborted due to stage failure: Could not recover from a failed "
    "barrier ResultStage. Most recent failure reason: Stage failed because barrier task ResultTask(3, 1) "
    "finished unsuccessfully.\nExecutorLostFailure (executor 1 exited caused by one of the running tasks) "
    "Reason: Command exited with code 137\n\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages"
)


def test_a_lost_executor_is_named_with_its_cause_not_the_py4j_call():
    from pipelines.launcher.driver import _explain_spark_error, explain_lost_executor

    message = _explain_spark_error(RuntimeError(LOST_EXECUTOR), 2)
    assert message.startswith("barrier stage failed: executor 1 was lost (caused by one of the running tasks): "
                              "Command exited with code 137 (SIGKILL: often the kernel's out-of-memory killer")
    assert "collectAndServe" not in message
    with_host = LOST_EXECUTOR.replace("finished unsuccessfully.", "finished unsuccessfully. Lost task 1.0 in stage "
                                      "3.0 (TID 7) (10.0.0.5 executor 1):")
    assert explain_lost_executor(with_host).startswith("executor 1 on 10.0.0.5 was lost")
    assert explain_lost_executor("Job aborted due to stage failure: Task 0 failed") is None


def test_any_other_stage_failure_keeps_sparks_reason_without_the_py4j_line():
    from pipelines.launcher.driver import _explain_spark_error

    text = ("An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.\n"
            ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 2.0 failed 1 "
            "times, most recent failure: disk full\n\tat org.apache.spark")
    assert _explain_spark_error(RuntimeError(text), 2) == ("barrier stage failed: Task 0 in stage 2.0 failed 1 "
                                                           "times, most recent failure: disk full")


def test_training_settings_reach_the_rank_environment_and_malloc_tuning_can_be_turned_off():
    from pipelines.config import TrainConfig
    from pipelines.train.driver import RANK_MALLOC_ENV, rank_env

    tuned = rank_env(TrainConfig(horovod_cycle_time_ms=2.5, horovod_fusion_threshold_mb=4))
    assert tuned == {"HOROVOD_CYCLE_TIME": "2.5", "HOROVOD_FUSION_THRESHOLD": str(4 << 20), **RANK_MALLOC_ENV,
                     "DLPIPE_PIN_RANKS": "1"}
    assert int(RANK_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]) <= 32 << 20  # glibc ignores a larger one
    plain = rank_env(TrainConfig(malloc_tuning=False, pin_ranks=False))
    assert set(plain) == {"HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD"}


@pytest.mark.parametrize("local_rank, local_size, threads, allowed, expected", [
    (0, 2, 1, {0, 1}, {0}),
    (1, 2, 1, {0, 1}, {1}),
    (1, 2, 2, {0, 1, 2, 3}, {2, 3}),
    (1, 2, 1, {4, 9}, {9}),          # the cores the task may use, not 0..n-1
    (0, 3, 1, {0, 1}, None),         # more rank threads than cores: no pinning
    (0, 1, 4, {0, 1}, None),
])
def test_each_rank_gets_its_own_cores_only_when_every_rank_can(local_rank, local_size, threads, allowed, expected):
    from pipelines.launcher.rank import cores_for_rank

    assert cores_for_rank(local_rank, local_size, threads, allowed) == expected
