"""The barrier-mode launcher on local[2]: real Spark, real Horovod over Gloo through its rendezvous."""
from __future__ import annotations

import logging
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.events import Joined, Probe, Started
from pipelines.launcher import LaunchError, LaunchOptions, run_ranks
from pipelines.train.rendezvous import HorovodRendezvous
from pipelines.train.smoke import ENTRY as ALLREDUCE


def allreduce(spark, payload: dict, **options):
    return run_ranks(spark, ALLREDUCE, payload, num_workers=options.pop("num_workers", 2),
                     rendezvous=HorovodRendezvous(), **options)


def test_two_ranks_allreduce_the_correct_sum(spark):
    result = allreduce(spark, {"scale": 10})
    # ranks contribute 10 and 20
    assert result["sum"] == [30.0, 30.0, 30.0, 30.0]
    assert result["size"] == 2
    assert result["threads"] == 1  # spark.task.cpus = 1 in local[2]


def test_typed_events_reach_the_driver_with_the_rank(spark):
    seen = []
    allreduce(spark, {}, on_event=seen.append)
    assert sorted((e.rank, type(e).__name__) for e in seen) == [
        (0, "Joined"), (0, "Started"), (1, "Joined"), (1, "Started")]
    assert all(isinstance(e, (Started, Joined)) and e.time > 0 for e in seen)


def test_a_rank_process_imports_no_pyspark_and_gets_no_settings_through_its_environment(spark):
    seen = []
    run_ranks(spark, "rank_probes:environment", {}, num_workers=2, on_event=seen.append)
    probes = [e for e in seen if isinstance(e, Probe)]
    assert len(probes) == 2
    for probe in probes:
        assert probe.data["pyspark_loaded"] is False and probe.data["driver_loaded"] is False
        assert probe.data["env"] == {}  # no HOROVOD_*/MALLOC_*/DLPIPE_* settings: they travel in the job


def test_a_setting_only_a_rank_can_check_is_one_config_error_with_its_log_and_no_traceback(spark, capsys):
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        run_ranks(spark, "rank_faults:config_error_on_rank", {"rank": 1}, num_workers=2,
                  rendezvous=HorovodRendezvous(), options=LaunchOptions(failure_timeout_s=30))
    assert time.monotonic() - started < 60
    assert err.value.key == "train.precision"
    message = str(err.value)
    assert "'train.precision' = 'bf16' but the GPU of this rank" in message and "reported by rank 1" in message
    log = re.search(r"its log \S+?:(\S+)\)", message).group(1)
    assert "Traceback" in Path(log).read_text()  # the traceback is in the rank's log file ...
    assert "Traceback" not in capsys.readouterr().out  # ... and not on the console


def test_a_rank_that_raises_fails_the_stage_with_its_cause_once_and_its_traceback_in_its_log(spark, capsys):
    started = time.monotonic()
    with pytest.raises(LaunchError) as err:
        run_ranks(spark, "rank_faults:raise_on_rank", {"rank": 1}, num_workers=2, rendezvous=HorovodRendezvous(),
                  options=LaunchOptions(failure_timeout_s=30))
    assert time.monotonic() - started < 60
    message = str(err.value)
    # the rank that failed first, its cause once, where its traceback is; the peer it took down after it
    assert message.startswith("rank 1 failed: ValueError: injected failure on rank 1 (traceback in its log ")
    assert message.count("injected failure") == 1 and len(message.splitlines()) == 1
    assert "Traceback" not in message
    log = re.search(r"its log \S+?:(\S+)\)", message).group(1)
    assert "Traceback" in Path(log).read_text() and "ValueError: injected failure on rank 1" in Path(log).read_text()
    console = capsys.readouterr().out
    assert "Traceback" not in console and "[rank 1] failed: ValueError (traceback in its log" in console


def test_a_rank_killed_without_a_word_shows_the_signal_and_its_last_lines(spark):
    with pytest.raises(LaunchError) as err:
        run_ranks(spark, "rank_faults:killed_on_rank", {"rank": 1}, num_workers=2, rendezvous=HorovodRendezvous(),
                  options=LaunchOptions(failure_timeout_s=30))
    message = str(err.value)
    # the rank killed first leads (its peer failed only because it was gone), with its log and last lines
    assert message.startswith("rank 1 was killed by SIGKILL (its log 127.0.0.1:") and "-rank1.log)" in message
    assert "; then rank 0 failed: HorovodInternalError" in message
    assert "--- last lines of rank 1 ---\nrank 1: about to be killed" in message
    assert message.count("last lines") == 1 and message.count("about to be killed") == 1


def test_more_ranks_than_slots_is_a_clear_error(spark):
    with pytest.raises(LaunchError, match="task slots"):
        allreduce(spark, {}, num_workers=3, options=LaunchOptions(start_timeout_s=20))


def test_a_rank_stuck_in_a_collective_ends_within_the_failure_timeout(spark):
    started = time.monotonic()
    with pytest.raises(LaunchError) as err:
        run_ranks(spark, "rank_faults:stall_on_rank", {"rank": 1}, num_workers=2, rendezvous=HorovodRendezvous(),
                  options=LaunchOptions(failure_timeout_s=10))
    assert time.monotonic() - started < 60
    assert "rank 0" in str(err.value) and "no progress for 10s" in str(err.value)


def test_a_foreign_client_is_refused_while_the_launch_succeeds(spark, caplog):
    """Anyone can reach the coordinator's port; only this launch's barrier tasks are let in."""
    caplog.set_level(logging.INFO, logger="dlpipe.launcher")
    replies: dict[str, bytes] = {}

    def coordinator_port() -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for record in list(caplog.records):
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", record.getMessage())
                if found:
                    return int(found.group(1))
            time.sleep(0.05)
        raise AssertionError("the coordinator never said where it listens")

    def intrude() -> None:
        port = coordinator_port()
        attempts = {
            # a wrong answer, then a registration that would steal rank 0
            "wrong_answer": b'{"type": "auth", "answer": "00"}\n{"type": "register", "partition": 0, "host": "x"}\n',
            "no_auth_register": b'{"type": "register", "partition": 0, "host": "x"}\n',
            "garbage": b"\x00\xff not json at all\n",
        }
        for name, data in attempts.items():
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                reader = sock.makefile("rb")
                assert b"challenge" in reader.readline()
                sock.sendall(data)
                replies[name] = reader.readline()  # b"": closed without an assignment

    intruder = threading.Thread(target=intrude, daemon=True)
    intruder.start()
    result = allreduce(spark, {"scale": 1})
    intruder.join(timeout=30)
    assert result["sum"] == [3.0] * 4  # ranks contribute 1 and 2: the intruder took no rank
    assert replies == {"wrong_answer": b"", "no_auth_register": b"", "garbage": b""}
    refused = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refused) == 3
