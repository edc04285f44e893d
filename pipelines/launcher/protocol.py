"""JSON-lines messages between the driver's coordinator and the barrier tasks.

Rank processes talk to their task through stdout: a line starting with ``EVENT_PREFIX`` carries
a JSON event (progress, metrics, the result); every other line is a log line.
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

EVENT_PREFIX = "@@dlpipe-event "
RESULT_EVENT = "result"
HEARTBEAT_INTERVAL_S = 5.0


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
    gloo_iface: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
