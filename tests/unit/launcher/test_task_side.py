"""Pure helpers of the launcher: the rank environment, exit descriptions, event lines."""
from __future__ import annotations

import signal

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
    }
    assert {k: env[k] for k in expected} == expected


def test_extra_env_wins_over_the_defaults():
    env = rank_environment(_spec(extra_env={"HOROVOD_CYCLE_TIME": "5", "OMP_NUM_THREADS": "1"}), ASSIGNMENT, 3)
    assert env["HOROVOD_CYCLE_TIME"] == "5" and env["OMP_NUM_THREADS"] == "1"


def test_describe_exit_names_the_code_or_the_signal():
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(-99) == "was killed by signal 99"


def test_event_lines_round_trip_and_log_lines_are_not_events():
    line = encode_event("epoch", {"rank": 0, "loss": 0.5})
    assert decode_event(line) == {"kind": "epoch", "rank": 0, "loss": 0.5}
    assert decode_event("epoch 1 done") is None
    assert decode_event(line[:-3]) is None  # a cut line is a log line, not a crash
