"""The RL actor-state key: the environment's, else a per-user file made 0600 on first use."""
from __future__ import annotations

import stat

from pipelines.rl import statekey


def test_the_key_comes_from_the_environment_else_a_private_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DLPIPE_STATE_KEY", "from-env")
    assert statekey.state_key() == b"from-env"
    monkeypatch.delenv("DLPIPE_STATE_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    first = statekey.state_key()
    path = tmp_path / "dlpipe" / "state.key"
    assert len(first) == 64 and path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert statekey.state_key() == first  # the same key on every later run


def test_only_states_signed_with_the_key_verify():
    key, other = b"k1", b"k2"
    blobs = [b"state-a", b"state-b"]
    macs = [statekey.sign(b, key) for b in blobs]
    assert statekey.verified(blobs, macs, key)
    assert not statekey.verified(blobs, macs, other)
    assert not statekey.verified([b"state-a", b"tampered"], macs, key)
    assert not statekey.verified(blobs, macs[:1], key)  # a state without its MAC
    assert not statekey.verified(blobs, [], key)  # a checkpoint from before states were signed
