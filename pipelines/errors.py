"""The error every layer may raise for a setting that cannot work (imports nothing of dlpipe).

:class:`ConfigError` names the config key at fault (``key``, when one is known) and says what to
change. The CLI prints it as one line (``dlpipe train: config error: ...``) with no traceback; a
rank that raises it (a setting only the rank could check, e.g. fp16 on a device without it) is
reported the same way by the launcher, with its traceback left in the rank's log file.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config file, override or setting is invalid; the message names the key and the fix."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key
