"""JSON-lines messages between the driver's coordinator and the barrier tasks.

Every connection to the coordinator is authenticated before anything else: the coordinator sends
a random challenge, the task answers with its HMAC under the launch's secret (a fresh one per
launch, known only to the driver and, through the Spark closure, the barrier tasks). Anything
else is dropped and logged.

Rank processes talk to their task through stdout: a line starting with ``EVENT_PREFIX`` carries
a JSON event (progress, metrics, the result); every other line is a log line.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

EVENT_PREFIX = "@@dlpipe-event "
RESULT_EVENT = "result"
HEARTBEAT_INTERVAL_S = 5.0
AUTH_TIMEOUT_S = 10.0  # a connection must authenticate within this, or it is closed
MAX_LINE_BYTES = 1 << 20  # longer lines are refused (no peer may make the driver buffer without bound)


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


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one JSON message terminated by a newline."""
    sock.sendall((json.dumps(message, default=str) + "\n").encode())


def encode_event(kind: str, data: dict[str, Any]) -> str:
    """The stdout line a rank prints to emit an event."""
    return EVENT_PREFIX + json.dumps({"kind": kind, **data}, default=str)


def decode_event(line: str) -> dict[str, Any] | None:
    """The event in a rank's stdout line, or None for an ordinary log line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        return json.loads(line[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None


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
    secret: str = field(repr=False, default="")  # authenticates the task to the coordinator
    gloo_iface: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
