"""The launcher's whole protocol in one file: typed messages between the driver's coordinator and
the barrier tasks, and the spec each rank process starts from.

Coordinator <-> task: one JSON object per line (:func:`encode` / :func:`decode`), one small frozen
dataclass per message. Every connection is authenticated before anything else: the coordinator
sends a :class:`Challenge`, the task answers with an :class:`Auth` holding the HMAC of it under the
launch's secret (fresh per launch, known only to the driver and, through the Spark closure, the
barrier tasks). Every later message, both ways, is sealed by a :class:`Channel` (a sequence number
and a MAC under a key of that connection). Anything else is dropped and logged.

    task -> coordinator: Auth, Register, LogLine, EventLine, Heartbeat, Exit
    coordinator -> task: Challenge, Assignment, Refused, Abort

Rank process -> its task: stdout lines. A line starting with :data:`EVENT_PREFIX` carries a rank
event (``pipelines.events``); every other line is a log line.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipelines import events
from pipelines.formats import FormatError, Record, TaggedCodec
from pipelines.launcher.plan import RankSlot

EVENT_PREFIX = "@@dlpipe-event "
HEARTBEAT_INTERVAL_S = 5.0
AUTH_TIMEOUT_S = 10.0  # a connection must authenticate within this, or it is closed
MAX_LINE_BYTES = 1 << 20  # longer lines are refused (no peer may make the driver buffer without bound)
LOG_TAIL_LINES = 10  # a rank's last lines kept, shown only for a rank that died without saying why
ROLES = ("driver", "task")  # the two ends of a channel
# What a rank's collectives raise when a peer is gone (Horovod, Gloo, torch.distributed): a
# consequence, not a root cause (the task waits before failing; the driver reports another first).
PEER_LOST = re.compile(r"HorovodInternalError|Horovod has been shut down|Connection (closed|reset) by peer|"
                       r"DistBackendError|DistNetworkError|Broken pipe", re.IGNORECASE)


@dataclass(frozen=True)
class Message(Record):
    type: ClassVar[str]


@dataclass(frozen=True)
class Challenge(Message):
    type: ClassVar[str] = "challenge"
    challenge: str


@dataclass(frozen=True)
class Auth(Message):
    type: ClassVar[str] = "auth"
    answer: str


@dataclass(frozen=True)
class Register(Message):
    type: ClassVar[str] = "register"
    partition: int
    host: str
    pid: int


@dataclass(frozen=True)
class Assignment(Message):
    """Once every task has registered: this task's rank, and what its rank process needs to join
    the others (the rendezvous's address and the variables its library reads)."""

    type: ClassVar[str] = "assignment"
    slot: RankSlot
    attempt: int
    rendezvous_addr: str
    rendezvous_port: int
    gloo_iface: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused(Message):
    type: ClassVar[str] = "refused"
    reason: str


@dataclass(frozen=True)
class Abort(Message):
    type: ClassVar[str] = "abort"


@dataclass(frozen=True)
class LogLine(Message):
    type: ClassVar[str] = "log"
    partition: int
    rank: int
    line: str


@dataclass(frozen=True)
class EventLine(Message):
    type: ClassVar[str] = "event"
    partition: int
    rank: int
    event: dict[str, Any]  # events.encode(...) of the rank's event


@dataclass(frozen=True)
class Heartbeat(Message):
    type: ClassVar[str] = "heartbeat"
    partition: int
    rank: int


@dataclass(frozen=True)
class Exit(Message):
    type: ClassVar[str] = "exit"
    partition: int
    rank: int
    code: int


MESSAGES: TaggedCodec[Message] = TaggedCodec("type", (
    Challenge, Auth, Register, Assignment, Refused, Abort, LogLine, EventLine, Heartbeat, Exit), "launcher message")
MESSAGE_TYPES = MESSAGES.types


def encode(message: Message) -> bytes:
    """One message as one JSON line."""
    return (json.dumps(MESSAGES.encode(message), default=str) + "\n").encode()


def decode(line: bytes | str) -> Message | None:
    """The message in one line; None for anything else (cut, too long, not JSON, unknown type,
    wrong fields): a peer's garbage never raises in the reader."""
    raw = line.encode() if isinstance(line, str) else line
    if not raw.endswith(b"\n") or len(raw) > MAX_LINE_BYTES:
        return None
    try:
        return MESSAGES.decode(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError, FormatError):
        return None


def send(sock: socket.socket, message: Message) -> None:
    """Send a handshake message (``Challenge``, ``Auth``): the only ones not sealed by a :class:`Channel`."""
    sock.sendall(encode(message))


class Channel:
    """One authenticated connection, after its handshake: every message is sealed with its sequence
    number and an HMAC-SHA256 under a key derived from the launch's secret and this connection's
    challenge, so a message that was forged, altered, replayed, reordered or taken from another
    connection or direction is refused (:meth:`open` returns None), not acted on."""

    def __init__(self, secret: str, challenge: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role {role!r}: one of {ROLES}")
        self._key = hmac.new(secret.encode(), b"dlpipe-channel\x00" + challenge.encode(), hashlib.sha256).digest()
        self._out, self._in = role, ROLES[1 - ROLES.index(role)]
        self._sent = self._received = 0
        self._lock = threading.RLock()  # sends come from several threads: each numbered and written in turn

    def _mac(self, direction: str, seq: int, body: str) -> str:
        return hmac.new(self._key, f"{direction}\n{seq}\n{body}".encode(), hashlib.sha256).hexdigest()

    def seal(self, message: Message) -> bytes:
        """``message`` as one sealed JSON line."""
        body = encode(message).decode().rstrip("\n")
        with self._lock:
            self._sent += 1
            seq = self._sent
        return (json.dumps({"seq": seq, "mac": self._mac(self._out, seq, body), "body": body}) + "\n").encode()

    def send(self, sock: socket.socket, message: Message) -> None:
        with self._lock:  # numbered and written in one order
            sock.sendall(self.seal(message))

    def open(self, line: bytes) -> Message | None:
        """The message in a sealed line from the peer; None when the line is not the peer's next
        message under this connection's key (or is not a message at all)."""
        if not line.endswith(b"\n") or len(line) > MAX_LINE_BYTES:
            return None
        try:
            sealed = json.loads(line)
            seq, mac, body = sealed["seq"], sealed["mac"], sealed["body"]
        except (ValueError, KeyError, TypeError):
            return None
        if not (isinstance(seq, int) and isinstance(mac, str) and isinstance(body, str)):
            return None
        if seq != self._received + 1 or not hmac.compare_digest(self._mac(self._in, seq, body), mac):
            return None
        self._received = seq
        return decode(body + "\n")


def new_secret() -> str:
    """A fresh per-launch secret."""
    return secrets.token_hex(32)


def new_challenge() -> str:
    return secrets.token_hex(16)


def answer(secret: str, challenge: str) -> str:
    """The HMAC-SHA256 a task sends back for ``challenge``."""
    return hmac.new(secret.encode(), challenge.encode(), hashlib.sha256).hexdigest()


def is_answer(secret: str, challenge: str, given: object) -> bool:
    """Constant-time check of a task's answer."""
    return isinstance(given, str) and hmac.compare_digest(answer(secret, challenge), given)


def event_line(event: events.RankEvent) -> str:
    """The stdout line a rank prints to emit ``event``."""
    return EVENT_PREFIX + json.dumps(events.encode(event), default=str)


def parse_event_line(line: str) -> dict[str, Any] | None:
    """The encoded event in a rank's stdout line (plain data), or None for an ordinary log line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        value = json.loads(line[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class TaskSpec:
    """Plain, picklable data every barrier task needs; shipped inside the task closure."""

    entry: str  # "module:function" the rank process calls with (payload, RankContext)
    payload: dict[str, Any]
    num_workers: int
    coordinator_host: str
    coordinator_port: int
    start_timeout_s: float
    failure_timeout_s: float
    launch_id: str  # names the rank log files of this launch
    secret: str = field(repr=False, default="")  # authenticates the task to the coordinator
    pin_cores: bool = False  # each rank process on its own cores when the host has enough


@dataclass(frozen=True)
class RankSpec(Record):
    """What one rank process starts from (its task writes it as JSON and passes the file's path):
    the entry to run, its payload, and everything the rank knows of its place in the job."""

    entry: str
    payload: dict[str, Any]
    slot: RankSlot
    threads: int  # cores given to the rank's task (spark.task.cpus)
    attempt: int  # 0 for the first launch, 1 for the first retry, ...
    gpus: list[str]  # the GPU addresses Spark gave the task ([] = none)
    rendezvous_addr: str
    rendezvous_port: int
    stall_timeout_s: float  # a rank that makes no progress for this long ends itself
    log_path: str  # this rank's log file on its host (output lines and tracebacks)
    pin_cores: bool = False
