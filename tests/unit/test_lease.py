"""One live job per run id: the fenced lease object, taken, refused, waited for, taken over (local disk
here; the same object on the S3 server in tests/unit/storage/test_conditional.py)."""
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
    monkeypatch.setattr(lease_mod, "POLL_S", 0.1)


def _holder(folder, ttl_s: float = 30.0, hold_s: float = 60.0) -> subprocess.Popen:
    """A process holding the lease; returns once it says "held" (60 s at most: an import of the
    lease module takes well under a second on a quiet machine)."""
    import selectors

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(ttl_s), str(hold_s)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    with selectors.DefaultSelector() as ready:
        ready.register(proc.stdout, selectors.EVENT_READ)
        if not ready.select(timeout=60):
            proc.kill()
            pytest.fail("the lease holder process did not say 'held' within 60 s")
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lease_is_taken_renewed_and_released(tmp_path):
    with Lease(str(tmp_path), "dlpipe run (run a)", ttl_s=6) as held:
        record = held.read()
        assert record.holder == held.token and record.job == "dlpipe run (run a)"
        assert record.expires_at - time.time() > 5 and record.fence == 1 and not record.released
    after = json.loads((tmp_path / LEASE_FILE).read_text())
    assert after["released"] is True and after["fence"] == 1  # kept, so the next job's token is higher
    with Lease(str(tmp_path), "dlpipe run (run a, again)") as again:
        assert again.fence == 2 and again.read().fence == 2


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
    """Waits for the holder's release (1.5 s after it said "held"), polling every 0.1 s: at least
    0.5 s must pass even if this process was slow to start waiting; 20 s at most (13x the hold)."""
    holder = _holder(tmp_path, hold_s=1.5)
    try:
        started = time.monotonic()
        with Lease(str(tmp_path), "second", wait_s=20) as second:
            assert 0.5 < time.monotonic() - started < 20
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
    """The other host's lease runs 30 s (the refusal must come within it, a few ms quiet); then its
    expiry is moved into the past, as if its holder had stopped renewing: no sleep to race."""
    record = {"holder": "x", "job": "dlpipe run (run a)", "host": "other-host", "pid": 1, "acquired_at": time.time(),
              "expires_at": time.time() + 30.0, "fence": 7}
    (tmp_path / LEASE_FILE).write_text(json.dumps(record))
    with pytest.raises(LeaseHeld, match="pid 1 on other-host"):
        Lease(str(tmp_path), "me").acquire()
    (tmp_path / LEASE_FILE).write_text(json.dumps({**record, "expires_at": time.time() - 1.0}))  # expired
    with Lease(str(tmp_path), "me") as mine:
        assert mine.read().job == "me" and mine.fence == 8  # a takeover raises the fencing token


def test_a_same_named_host_in_another_container_is_not_taken_for_this_one(tmp_path):
    """Two containers share a host name but not a boot id / pid namespace: a pid that does not exist
    here says nothing about the other container's process, so its lease is respected."""
    (tmp_path / LEASE_FILE).write_text(json.dumps({
        "holder": "x", "job": "dlpipe run (run a)", "host": lease_mod.socket.gethostname(), "pid": 999999,
        "acquired_at": time.time(), "expires_at": time.time() + 60, "machine": "same-name/other-boot/pid:[1]"}))
    with pytest.raises(LeaseHeld, match="pid 999999"):
        Lease(str(tmp_path), "me").acquire()


@pytest.mark.parametrize("content", ['{"holder": "x", "job": "j", "new_field_of_a_later_version": 1}', "\x00garbage"])
def test_an_unreadable_lease_record_counts_as_held_and_says_what_to_do(tmp_path, content):
    (tmp_path / LEASE_FILE).write_text(content)
    with pytest.raises(LeaseHeld, match="cannot read .* counts as held: if no job is writing this run, delete that file"):
        Lease(str(tmp_path), "me").acquire()
    assert (tmp_path / LEASE_FILE).read_text() == content  # not overwritten


def test_of_jobs_racing_for_a_free_lease_exactly_one_wins_each_round(tmp_path):
    """Eight threads race for the same free lease (no settle-and-verify delay to hide behind): the
    conditional writes let exactly one through; the others are told who holds it."""
    import threading

    barrier = threading.Barrier(8)
    won: list[Lease] = []
    refused: list[str] = []

    def contend(i: int) -> None:
        lease = Lease(str(tmp_path), f"job {i}", ttl_s=30)
        barrier.wait()
        try:
            won.append(lease.acquire())
        except LeaseHeld as e:
            refused.append(str(e))

    for round_ in range(3):
        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(won) == 1 and len(refused) == 7, (won, refused)
        assert all(won[0].job in message for message in refused)
        assert won[0].verify() == round_ + 1  # fence 1, 2, 3: one more at every new holder
        won.pop().release()
        refused.clear()


def test_a_holder_that_cannot_renew_stops_before_its_lease_could_expire(tmp_path, monkeypatch):
    held = Lease(str(tmp_path), "first", ttl_s=6).acquire()
    try:
        held.check()  # just renewed
        monkeypatch.setattr(lease_mod.time, "monotonic", lambda: held._renewed_at + 6 * 0.8)  # 4.8 s unrenewed
        with pytest.raises(lease_mod.LeaseLost, match="could not renew its lease for 5 s .* stops before writing"):
            held.check()
    finally:
        monkeypatch.undo()
        held.release()


def test_a_lease_taken_over_while_held_is_reported_as_lost_and_fences_its_commits(tmp_path):
    held = Lease(str(tmp_path), "first", ttl_s=6).acquire()
    other = Lease(str(tmp_path), "thief", ttl_s=6)
    record = other.read()
    # as if the first job had been paused past its lease and another took over
    assert other._take(record.fence + 1, lease_mod.storage.read_versioned(other.path)[1])
    with pytest.raises(lease_mod.LeaseLost, match="was taken over by thief"):
        held.verify()  # a commit re-reads the lease: refused at once, before the next renewal
    held.release()
    assert other.read().job == "thief" and not other.read().released  # the loser does not touch the winner's lease
