"""Every launcher message after the handshake is sealed (sequence number + HMAC under a key of that
connection): forged, altered, replayed, reordered or reflected messages are refused; a rank's
environment takes only its rendezvous's variables; unauthenticated connections are capped."""
from __future__ import annotations

import logging
import socket
import time

import pytest

from pipelines.launcher import protocol
from pipelines.launcher.driver import MAX_PENDING_EXTRA, Coordinator
from pipelines.launcher.plan import RankSlot
from pipelines.launcher.rendezvous import NoRendezvous
from pipelines.launcher.task import rank_environment

SECRET, CHALLENGE = protocol.new_secret(), protocol.new_challenge()
SLOT = RankSlot(0, 1, 0, 1, 0, 1, "127.0.0.1")


def _pair() -> tuple[protocol.Channel, protocol.Channel]:
    return protocol.Channel(SECRET, CHALLENGE, "driver"), protocol.Channel(SECRET, CHALLENGE, "task")


def test_a_sealed_message_opens_once_in_order_and_only_at_the_other_end():
    driver, task = _pair()
    first, second = driver.seal(protocol.Abort()), driver.seal(protocol.Refused("no"))
    assert task.open(second) is None  # out of order
    assert task.open(first) == protocol.Abort()
    assert task.open(first) is None  # replayed
    assert task.open(second) == protocol.Refused("no")
    assert driver.open(task.seal(protocol.Heartbeat(0, 0))) == protocol.Heartbeat(0, 0)
    assert driver.open(driver.seal(protocol.Abort())) is None  # its own message reflected back


@pytest.mark.parametrize("forge", ["altered", "other_key", "other_connection", "unsealed", "garbage"])
def test_a_forged_or_altered_message_is_refused(forge):
    driver, task = _pair()
    line = driver.seal(protocol.Refused("genuine"))
    forged = {
        "altered": line.replace(b"genuine", b"tamperd"),
        "other_key": protocol.Channel(protocol.new_secret(), CHALLENGE, "driver").seal(protocol.Abort()),
        "other_connection": protocol.Channel(SECRET, protocol.new_challenge(), "driver").seal(protocol.Abort()),
        "unsealed": protocol.encode(protocol.Abort()),
        "garbage": b"\x00\xff{not json\n",
    }[forge]
    assert task.open(forged) is None
    assert task.open(line) == protocol.Refused("genuine")  # the genuine next message still opens


def test_a_rank_environment_takes_only_its_rendezvous_variables():
    ok = protocol.Assignment(SLOT, 0, "127.0.0.1", 1, "lo", env={"HOROVOD_RANK": "0", "GLOO_SOCKET_IFNAME": "lo"})
    assert rank_environment(ok, threads=1)["HOROVOD_RANK"] == "0"
    bad = protocol.Assignment(SLOT, 0, "127.0.0.1", 1, "lo", env={"HOROVOD_RANK": "0", "LD_PRELOAD": "/tmp/x.so"})
    with pytest.raises(RuntimeError, match="sets LD_PRELOAD: a rank's environment takes only its rendezvous"):
        rank_environment(bad, threads=1)


def test_the_coordinator_drops_replayed_and_unsealed_messages_after_the_handshake(caplog):
    caplog.set_level(logging.WARNING, logger="dlpipe.launcher")
    coordinator = Coordinator("127.0.0.1", 2, gloo_iface="lo", attempt=0, secret=SECRET, rendezvous=NoRendezvous())
    try:
        with socket.create_connection(("127.0.0.1", coordinator.port), timeout=10) as sock:
            challenge = protocol.decode(sock.makefile("rb").readline())
            protocol.send(sock, protocol.Auth(protocol.answer(SECRET, challenge.challenge)))
            channel = protocol.Channel(SECRET, challenge.challenge, "task")
            register = channel.seal(protocol.Register(0, "127.0.0.1", 1))
            sock.sendall(register + register + protocol.encode(protocol.Exit(0, 0, 0)))  # once, replayed, unsealed
            deadline = time.monotonic() + 10
            while len([r for r in caplog.records if "dropped a message" in r.getMessage()]) < 2:
                assert time.monotonic() < deadline, "the coordinator did not drop both"
                time.sleep(0.05)
        seen = []
        while not coordinator.messages.empty():
            seen.append(coordinator.messages.get())
        assert [type(m).__name__ for m in seen if not type(m).__name__.startswith("_")] == ["Register"]
    finally:
        coordinator.close()


def test_connections_that_do_not_authenticate_are_capped():
    coordinator = Coordinator("127.0.0.1", 1, gloo_iface="lo", attempt=0, secret=SECRET, rendezvous=NoRendezvous())
    cap = 1 + MAX_PENDING_EXTRA
    socks = [socket.create_connection(("127.0.0.1", coordinator.port), timeout=5) for _ in range(cap + 3)]
    try:
        first_lines = [s.makefile("rb").readline() for s in socks]  # a challenge, or b"" (closed at once)
        challenged = [line for line in first_lines if isinstance(protocol.decode(line), protocol.Challenge)]
        assert len(challenged) == cap and first_lines.count(b"") == 3
    finally:
        for s in socks:
            s.close()
        coordinator.close()


def test_the_coordinator_binds_the_bind_address_and_tells_tasks_the_advertised_host():
    """spark.driver.bindAddress (what this host can bind, e.g. in a pod) differs from spark.driver.host
    (what executors reach): sockets bind the first, assignments name the second."""
    coordinator = Coordinator("localhost", 1, gloo_iface="lo", attempt=0, secret=SECRET, rendezvous=NoRendezvous(),
                              bind_host="127.0.0.1")
    try:
        assert coordinator._server.server_address[0] == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", coordinator.port), timeout=10) as sock:
            reader = sock.makefile("rb")
            challenge = protocol.decode(reader.readline())
            protocol.send(sock, protocol.Auth(protocol.answer(SECRET, challenge.challenge)))
            channel = protocol.Channel(SECRET, challenge.challenge, "task")
            channel.send(sock, protocol.Register(0, "127.0.0.1", 1))
            assignment = channel.open(reader.readline())
        assert isinstance(assignment, protocol.Assignment) and assignment.rendezvous_addr == "localhost"
    finally:
        coordinator.close()


def test_events_and_launcher_messages_share_one_tagged_codec():
    from pipelines import events
    from pipelines.formats import FormatError, TaggedCodec
    from pipelines.launcher import protocol

    assert isinstance(events.EVENTS, TaggedCodec) and isinstance(protocol.MESSAGES, TaggedCodec)
    exit_message = protocol.Exit(partition=1, rank=1, code=3)
    assert protocol.decode(protocol.encode(exit_message)) == exit_message
    assert events.decode(events.encode(events.MemoryUse(parameters=5, optimizer_bytes=8))).parameters == 5
    with pytest.raises(FormatError, match="rank event: unknown kind 'nonesuch'"):
        events.decode({"kind": "nonesuch"})
    assert protocol.decode(b'{"type": "nonesuch"}\n') is None  # a peer's garbage never raises
