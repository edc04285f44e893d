"""Conditional writes on local disk and on a real S3 server (moto's, honouring If-None-Match / If-Match),
and the fenced lease built on them racing on the S3 server."""
from __future__ import annotations

import threading
import uuid

import pytest

from pipelines import storage
from pipelines.lease import Lease, LeaseHeld


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    server = request.getfixturevalue("s3")
    server.make_bucket("dlpipe-conditional")
    return f"s3://dlpipe-conditional/t-{uuid.uuid4().hex[:8]}"


def test_create_if_absent_refuses_an_existing_object(folder):
    location = storage.join(folder, "head-000001.json")
    assert storage.read_versioned(location) is None
    version = storage.create_if_absent(location, b"first")
    with pytest.raises(storage.WriteConflict, match="another job created it first"):
        storage.create_if_absent(location, b"second")
    assert storage.read_versioned(location) == (b"first", version)


def test_replace_if_version_refuses_a_stale_version_and_accepts_the_current_one(folder):
    location = storage.join(folder, "_lease.json")
    first = storage.create_if_absent(location, b"v1")
    second = storage.replace_if_version(location, b"v2", first)
    assert second != first
    with pytest.raises(storage.WriteConflict, match="another job changed or removed it since this job read it"):
        storage.replace_if_version(location, b"v3 from a job that read v1", first)
    assert storage.read_versioned(location) == (b"v2", second)
    with pytest.raises(storage.WriteConflict):
        storage.replace_if_version(storage.join(folder, "absent.json"), b"x", first)


def test_of_threads_racing_to_create_one_object_exactly_one_wins(folder):
    location = storage.join(folder, "race.json")
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def create(i: int) -> None:
        barrier.wait()
        try:
            storage.create_if_absent(location, f"writer {i}".encode())
            outcomes.append(f"won {i}")
        except storage.WriteConflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(outcomes) == 6 and len(winners) == 1, outcomes
    assert storage.read_versioned(location)[0] == f"writer {winners[0].split()[1]}".encode()


def test_on_the_s3_server_two_jobs_racing_for_a_lease_get_one_holder_and_fences_that_grow(s3):
    s3.make_bucket("dlpipe-conditional")
    folder = f"s3://dlpipe-conditional/lease-{uuid.uuid4().hex[:8]}"
    for round_ in range(1, 4):
        barrier = threading.Barrier(2)
        won: list[Lease] = []
        refused: list[LeaseHeld] = []

        def contend(i: int) -> None:
            lease = Lease(folder, f"job {i} of round {round_}", ttl_s=30)
            barrier.wait()
            try:
                won.append(lease.acquire())
            except LeaseHeld as e:
                refused.append(e)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(won) == 1 and len(refused) == 1
        assert won[0].verify() == round_
        won[0].release()


@pytest.mark.parametrize("location,fenced", [("/tmp/x", True), ("s3://b/x", True), ("gs://b/x", False),
                                             ("hdfs:///x", False), ("az://c/x", False)])
def test_every_store_says_whether_its_commits_are_fenced(location, fenced):
    assert storage.fenced(location) is fenced
    line = storage.fencing(location)
    assert ("not fenced" in line) is (not fenced) and ("keep one writer" in line) is (not fenced)
