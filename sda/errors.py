"""Errors a user can act on. Each renders as one line: what is wrong, the value, what is allowed.

Entry points catch `SdaError`, print `str(error)` and exit non-zero; nothing else prints tracebacks
for these.
"""

from __future__ import annotations

from typing import Any


class SdaError(Exception):
    """Base class: the message is already a complete one-line explanation."""

    exit_code = 1


class ConfigError(SdaError):
    """A configuration value is not allowed. Exit status 2, like a command-line usage error."""

    exit_code = 2

    _NO_VALUE = object()

    def __init__(self, key: str, value: Any = _NO_VALUE, allowed: str = "") -> None:
        # OmegaConf re-raises exceptions from inside to_object() as `type(e)(message)`: a lone
        # argument is then an already formatted message.
        if value is ConfigError._NO_VALUE:
            self.key, self.value, self.allowed = "", None, ""
            super().__init__(key)
            return
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class CheckpointError(SdaError):
    """A model checkpoint is missing, unreadable or does not match what is expected."""


class DatasetError(SdaError):
    """A training or evaluation dataset cannot be used."""


class OutputError(SdaError):
    """Outputs cannot be written: disk full, folder not writable, name taken."""
