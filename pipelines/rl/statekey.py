"""The key that signs RL actors' environment states in checkpoints, kept off the work folder.

An actor's state is its vector environment as Gymnasium keeps it (arbitrary Python objects), so it
travels as cloudpickle bytes, and unpickling runs code. A checkpoint therefore stores an HMAC of
each state under this key, and a resume loads only states whose MAC matches: whoever can write the
run folder but not read this key cannot make the cluster run their code. The key: the
``DLPIPE_STATE_KEY`` environment variable (any string; set the same one wherever a run resumes),
else ``$XDG_CONFIG_HOME/dlpipe/state.key`` (``~/.config``), made on first use, readable by its owner only.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

ENV = "DLPIPE_STATE_KEY"


def key_file() -> Path:
    """Where this machine's key is kept when ``DLPIPE_STATE_KEY`` is not set."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "dlpipe" / "state.key"


def state_key() -> bytes:
    """The signing key: ``$DLPIPE_STATE_KEY``, else this user's key file (created 0600 when missing)."""
    if os.environ.get(ENV):
        return os.environ[ENV].encode()
    path = key_file()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def sign(blob: bytes, key: bytes) -> str:
    """The HMAC-SHA256 of one actor state."""
    return hmac.new(key, blob, hashlib.sha256).hexdigest()


def verified(blobs: list[bytes], macs: list[str], key: bytes) -> bool:
    """Whether every state has its MAC under ``key`` (constant-time)."""
    return len(blobs) == len(macs) and all(
        isinstance(b, bytes) and isinstance(m, str) and hmac.compare_digest(sign(b, key), m)
        for b, m in zip(blobs, macs))
