"""One live job per run id: the lease object, taken, refused, waited for, taken over (local disk here;
the same object on S3 in tests/spark/storage)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pipelines import lease as lease_mod
from pipelines.lease import LEASE_FILE, Lease, LeaseHeld
from testkit import REPO_ROOT

HOLD = """
import sys, time
from pipelines.lease import Lease
with Lease(sys.argv[1], "dlpipe train (run r1)", ttl_s=float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(lease_mod, "SETTLE_S", 0.05)
    monkeypatch.setattr(lease_mod, "POLL_S", 0.1)


def _holder(folder, ttl_s: float = 30.0, hold_s: float = 60.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(ttl_s), str(hold_s)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lease_is_taken_renewed_and_released(tmp_path):
    with Lease(str(tmp_path), "dlpipe run (run a)", ttl_s=6) as held:
        record = held.read()
        assert record.holder == held.token and record.job == "dlpipe run (run a)"
        assert record.expires_at - time.time() > 5
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_second_job_is_refused_naming_the_holder_and_what_to_do(tmp_path):
    holder = _holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(LeaseHeld) as err:
            Lease(str(tmp_path), "dlpipe train (run r1)").acquire()
        assert time.monotonic() - started < 5
        message = str(err.value)
        assert f"pid {holder.pid}" in message and "dlpipe train (run r1)" in message and "lease.wait_s" in message
        assert err.value.key == "run_id"
    finally:
        holder.kill()
        holder.wait()


def test_with_wait_s_a_second_job_waits_and_takes_over_when_the_first_releases(tmp_path):
    holder = _holder(tmp_path, hold_s=1.5)
    try:
        started = time.monotonic()
        with Lease(str(tmp_path), "second", wait_s=20) as second:
            assert 1.0 < time.monotonic() - started < 15
            assert second.read().job == "second"
    finally:
        holder.wait(timeout=30)


def test_a_killed_holders_lease_is_taken_over_at_once_on_its_host(tmp_path):
    holder = _holder(tmp_path, ttl_s=300)
    holder.kill()
    holder.wait()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["pid"] == holder.pid  # the dead job's lease is still there
    with Lease(str(tmp_path), "retry") as retry:
        assert retry.read().job == "retry"


def test_another_hosts_lease_is_respected_until_it_expires(tmp_path):
    (tmp_path / LEASE_FILE).write_text(json.dumps({
        "holder": "x", "job": "dlpipe run (run a)", "host": "other-host", "pid": 1, "acquired_at": time.time(),
        "expires_at": time.time() + 1.0}))
    with pytest.raises(LeaseHeld, match="pid 1 on other-host"):
        Lease(str(tmp_path), "me").acquire()
    time.sleep(1.1)  # its holder stopped renewing: the lease expired
    with Lease(str(tmp_path), "me") as mine:
        assert mine.read().job == "me"


def test_a_lease_taken_over_while_held_is_reported_as_lost(tmp_path):
    held = Lease(str(tmp_path), "first", ttl_s=6).acquire()
    other = Lease(str(tmp_path), "thief", ttl_s=6)
    other._write()  # as if this job had been paused past its lease and another took over
    time.sleep(2.5)  # the first renewal (ttl / 3) sees it
    with pytest.raises(lease_mod.LeaseLost, match="was taken over by thief"):
        held.check()
    held.release()
    assert other.read().job == "thief"  # the loser does not remove the winner's lease
