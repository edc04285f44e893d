"""The driver's coordinator with fake tasks on loopback (no Spark): failures of its threads, refusals."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from pipelines.errors import ConfigError
from pipelines.launcher import protocol
from pipelines.launcher.driver import Coordinator, _Failed
from pipelines.launcher.rendezvous import NoRendezvous


def _task(port: int, secret: str, partition: int, host: str, replies: dict[int, object]) -> None:
    """Authenticate, register from ``host``, and keep the first message the coordinator answers
    (b"" when it closed the connection instead)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        challenge = protocol.decode(reader.readline())
        protocol.send(sock, protocol.Auth(protocol.answer(secret, challenge.challenge)))
        channel = protocol.Channel(secret, challenge.challenge, "task")
        channel.send(sock, protocol.Register(partition, host, 1))
        try:
            line = reader.readline()
        except OSError:
            line = b""
        replies[partition] = channel.open(line) if line else b""


def _waiting_stage() -> threading.Thread:
    stage = threading.Thread(target=time.sleep, args=(60,), daemon=True)
    stage.start()
    return stage


def test_a_coordinator_thread_failure_reaches_the_wait_loop_naming_the_config_key():
    secret = protocol.new_secret()
    coordinator = Coordinator("127.0.0.1", 2, gloo_iface="", attempt=0, secret=secret, rendezvous=NoRendezvous())
    replies: dict[int, bytes] = {}
    tasks = [threading.Thread(target=_task, args=(coordinator.port, secret, p, h, replies)) for p, h in
             ((0, "10.0.0.1"), (1, "10.0.0.2"))]
    for t in tasks:
        t.start()
    started = time.monotonic()
    failure = coordinator.watch(_waiting_stage(), start_timeout_s=30, failure_timeout_s=30, on_event=None)
    assert time.monotonic() - started < 10  # not the start timeout: the thread's own error, at once
    assert isinstance(failure, _Failed) and isinstance(failure.error, ConfigError)
    assert failure.error.key == "train.gloo_iface" and "2 hosts (10.0.0.1, 10.0.0.2)" in str(failure.error)
    coordinator.close()
    for t in tasks:
        t.join(timeout=10)
    # No assignment was sent: each task sees the abort, or the connection close.
    assert sorted(replies) == [0, 1]
    assert all(r == b"" or isinstance(r, protocol.Abort) for r in replies.values()), replies


def test_a_peer_without_the_launch_secret_is_refused_and_never_registers():
    secret = protocol.new_secret()
    coordinator = Coordinator("127.0.0.1", 1, gloo_iface="lo", attempt=0, secret=secret, rendezvous=NoRendezvous())
    replies: dict[int, bytes] = {}
    _task(coordinator.port, protocol.new_secret(), 0, "127.0.0.1", replies)  # another launch's secret
    assert replies[0] == b"" and coordinator._registered == {}
    coordinator.close()


def test_one_task_gets_its_assignment_with_the_rendezvous_address():
    secret = protocol.new_secret()
    coordinator = Coordinator("127.0.0.1", 1, gloo_iface="", attempt=3, secret=secret, rendezvous=NoRendezvous())
    replies: dict[int, bytes] = {}
    _task(coordinator.port, secret, 0, "127.0.0.1", replies)
    assignment = replies[0]
    assert isinstance(assignment, protocol.Assignment)
    assert (assignment.slot.rank, assignment.slot.size, assignment.attempt, assignment.gloo_iface) == (0, 1, 3, "lo")
    assert assignment.rendezvous_addr == "127.0.0.1"
    coordinator.close()


@pytest.mark.parametrize("make", ["horovod", "torch"])
def test_each_rendezvous_listens_on_the_drivers_address_only(make):
    import psutil

    from pipelines.launcher.plan import assign_ranks
    from pipelines.train.rendezvous import HorovodRendezvous, TorchStoreRendezvous

    rendezvous = HorovodRendezvous() if make == "horovod" else TorchStoreRendezvous(timeout_s=5)
    port = rendezvous.start("127.0.0.1", list(assign_ranks({0: "127.0.0.1"}).values()))
    try:
        listening = [c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    finally:
        rendezvous.close()
