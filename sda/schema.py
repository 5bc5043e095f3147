"""What a settings dataclass is, with nothing of Hydra in it: sealed after validation, a plain
dict, and the one range check.

A settings type here serves twice: as the Hydra schema an entry point composes into (through
`sda.config`), and as the object the code uses at run time (the DSP, the data and the model
modules import it from here, never from `sda.config`, which imports Hydra). Such a type is a
`@dataclass(unsafe_hash=True)` subclass of `Sealed`, not `frozen=True`: OmegaConf makes frozen
schemas read-only, and Hydra could then no longer merge YAML and overrides into them. Sealing
gives the same guarantee once the object exists: assigning to it raises, so it can be hashed
(an lru_cache key, say) and shared.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from sda.errors import ConfigError


class Sealed:
    """Dataclass mixin: `validate()` runs after `__init__`, then assignment raises."""

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_sealed", False):
            raise dataclasses.FrozenInstanceError(f"cannot assign to {type(self).__name__}.{name}: read-only")
        object.__setattr__(self, name, value)

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "_sealed", True)

    def validate(self) -> None:
        """Range checks; raise ConfigError naming the full key. May normalize fields (lists to
        tuples) with `object.__setattr__`, as the object is not sealed yet."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (enums as their values, tuples as lists, nested settings by
        their own `to_dict`: a config group's option adds its name)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def plain(value: Any) -> Any:
    if isinstance(value, Sealed):
        return value.to_dict()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def check_range(key: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    """`value` within [low, high] (or (low, high] with `low_open`); NaN never is."""
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(key, value, f"allowed range is {bracket}{low:g}, {high:g}]")


def check_choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, "one of " + ", ".join(repr(a) if isinstance(a, str) else str(a) for a in allowed))
