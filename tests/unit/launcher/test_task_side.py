"""Pure helpers of the launcher: the rank environment, the rank plan, exit descriptions, typed messages."""
from __future__ import annotations

import os
import signal

import pytest

from pipelines import events
from pipelines.launcher import protocol
from pipelines.launcher.plan import RankSlot, assign_ranks
from pipelines.launcher.protocol import Assignment
from pipelines.launcher.task import describe_exit, rank_environment
from pipelines.train.rendezvous import HorovodRendezvous, TorchStoreRendezvous

SLOT = RankSlot(rank=1, size=2, local_rank=1, local_size=2, cross_rank=0, cross_size=1, hostname="127.0.0.1")


def _assignment(env: dict[str, str] | None = None) -> Assignment:
    return Assignment(slot=SLOT, attempt=2, rendezvous_addr="127.0.0.1", rendezvous_port=4321, gloo_iface="lo",
                      env=env or {})


def test_horovods_rendezvous_hands_each_rank_its_gloo_variables():
    env = rank_environment(_assignment(HorovodRendezvous().rank_env(SLOT, "127.0.0.1", 4321, "lo")), threads=3)
    expected = {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": "127.0.0.1", "HOROVOD_GLOO_RENDEZVOUS_PORT": "4321",
        "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_GLOO_IFACE": "lo",
        "HOROVOD_HOSTNAME": "127.0.0.1", "HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1",
        "HOROVOD_LOCAL_SIZE": "2", "HOROVOD_CROSS_RANK": "0", "HOROVOD_CROSS_SIZE": "1",
        "OMP_NUM_THREADS": "3", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
    }
    assert {k: env[k] for k in expected} == expected
    assert "GLOO_SOCKET_IFNAME" not in env or "GLOO_SOCKET_IFNAME" in os.environ


def test_a_torch_rendezvous_sets_no_horovod_variables_and_settings_travel_in_the_job_not_the_environment():
    env = rank_environment(_assignment(TorchStoreRendezvous().rank_env(SLOT, "127.0.0.1", 5555, "lo")), threads=1)
    assert env["GLOO_SOCKET_IFNAME"] == "lo"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("1", "2", "1")
    assert not [k for k in env if k.startswith("HOROVOD_") and k not in os.environ]
    assert not [k for k in env if k.startswith(("DLPIPE_", "MALLOC_")) and k not in os.environ]


def test_horovod_settings_come_from_the_train_config_in_the_rank():
    from pipelines.config import TrainConfig
    from pipelines.launcher.rank import RankContext
    from pipelines.train.strategies.horovod import HorovodStrategy

    strategy = HorovodStrategy(RankContext(0, 2, 0), TrainConfig(horovod_cycle_time_ms=2.5,
                                                                 horovod_fusion_threshold_mb=4, failure_timeout_s=90))
    assert strategy.settings_env() == {
        "HOROVOD_CYCLE_TIME": "2.5", "HOROVOD_FUSION_THRESHOLD": str(4 << 20), "HOROVOD_GLOO_TIMEOUT_SECONDS": "90",
        "HOROVOD_STALL_CHECK_TIME_SECONDS": "45", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "90"}


def test_a_task_with_spark_gpus_shows_its_rank_only_those(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # what the executor itself may see
    env = rank_environment(_assignment(), threads=1, gpus=("2",))
    assert env["CUDA_VISIBLE_DEVICES"] == "2"


def test_a_task_without_spark_gpus_leaves_the_workers_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # one multi-GPU node, no Spark GPU scheduling
    env = rank_environment(_assignment(), threads=1)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_ranks_are_planned_by_host_as_horovodrun_would():
    from horovod.runner.common.util.hosts import HostInfo, get_host_assignments

    hosts = {0: "a", 1: "b", 2: "a", 3: "c", 4: "a", 5: "b"}
    mine = assign_ranks(hosts)
    assert [mine[p].rank for p in (0, 2, 4, 1, 5, 3)] == [0, 1, 2, 3, 4, 5]  # a host's ranks are consecutive
    plan = get_host_assignments([HostInfo("a", 3), HostInfo("b", 2), HostInfo("c", 1)], 6)
    by_rank = {s.rank: s for s in mine.values()}
    for theirs in plan:
        ours = by_rank[theirs.rank]
        assert (ours.hostname, ours.local_rank, ours.local_size, ours.cross_rank, ours.cross_size, ours.size) == (
            theirs.hostname, theirs.local_rank, theirs.local_size, theirs.cross_rank, theirs.cross_size, theirs.size)


def test_describe_exit_names_the_code_or_the_signal():
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(-99) == "was killed by signal 99"


def test_event_lines_round_trip_and_log_lines_are_not_events():
    event = events.StepProgress(epoch=1, step=3, steps=9, loss=0.5, samples_per_s=100.0, rank=0, time=1.0)
    line = protocol.event_line(event)
    assert events.decode(protocol.parse_event_line(line)) == event
    assert protocol.parse_event_line("epoch 1 done") is None
    assert protocol.parse_event_line(line[:-3]) is None  # a cut line is a log line, not a crash


def test_an_event_of_an_unknown_kind_is_refused_not_guessed():
    from pipelines.formats import FormatError

    with pytest.raises(FormatError, match="unknown kind 'bench_peak_rss'"):
        events.decode({"kind": "bench_peak_rss", "rank": 0})
    record = events.EpochRecord(epoch=2, loss=0.3, samples=100, samples_per_s=50.0, seconds=2.0,
                                data_wait_fraction=0.1, metrics={"accuracy": 0.9}, val={"loss": 0.4})
    flat = record.to_dict()
    assert flat["val_loss"] == 0.4 and flat["accuracy"] == 0.9  # metrics.jsonl keeps its flat shape
    assert events.EpochRecord.from_dict(flat) == record


def test_only_the_launch_secret_answers_the_challenge():
    from pipelines.launcher.protocol import answer, is_answer, new_challenge, new_secret

    secret, challenge = new_secret(), new_challenge()
    assert new_secret() != secret  # fresh per launch
    assert is_answer(secret, challenge, answer(secret, challenge))
    assert not is_answer(secret, challenge, answer(new_secret(), challenge))
    assert not is_answer(secret, challenge, None) and not is_answer(secret, challenge, 42)


def test_the_coordinator_decodes_only_whole_messages_of_known_types():
    assert protocol.decode(b'{"type": "log", "partition": 0, "rank": 0, "line": "x"}\n') == protocol.LogLine(0, 0, "x")
    for bad in (b'{"type": "log"', b"not json\n", b"[1, 2]\n", b"\xff\xfe\n", b"", b'{"type": "nope"}\n',
                b'{"type": "exit", "partition": 0, "rank": 0, "code": "x"}\n'):
        assert protocol.decode(bad) is None, bad
    assignment = _assignment({"A": "1"})
    assert protocol.decode(protocol.encode(assignment)) == assignment


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


def test_malloc_tuning_sets_the_thresholds_in_the_rank_process():
    from pipelines.train.rank import M_MMAP_THRESHOLD, RANK_MALLOC

    assert RANK_MALLOC[M_MMAP_THRESHOLD] <= 32 << 20  # glibc ignores a larger one


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


def test_a_rank_gets_none_of_sparks_or_dlpipes_secrets(monkeypatch):
    for name in ("_SPARK_AUTH_SECRET", "PYSPARK_GATEWAY_SECRET", "PYTHON_WORKER_FACTORY_SECRET", "DLPIPE_STATE_KEY"):
        monkeypatch.setenv(name, "planted")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")  # the stores' own chains stay: a rank reads data with them
    env = rank_environment(_assignment(), threads=1)
    assert "planted" not in env.values() and env["AWS_REGION"] == "eu-west-1"
