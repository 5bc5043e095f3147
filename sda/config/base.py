"""What every config schema shares: sealing after validation, plain dicts and the range check
(from `sda.schema`, which the run-time types use without Hydra), and the seed and device checks.

Range checks run in `validate()`, which `OmegaConf.to_object` triggers through `__post_init__`;
they never ask the hardware. Whether a device exists is checked where it is resolved, at run
time (`resolve_device`), so pre-flight on a CPU-only login node accepts `device=cuda` for a job
that will run on a GPU node.
"""

from __future__ import annotations

import re

import torch

from sda.errors import ConfigError
from sda.schema import Sealed, check_range, plain

__all__ = ["MAX_SEED", "Sealed", "check_device", "check_range", "check_seed", "plain", "resolve_device"]

MAX_SEED = 2**32 - 1
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_seed(key: str, value: int) -> None:
    """A seed users type: an integer in [0, 2^32 - 1] (torch would silently remap others)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(key, value, f"an integer in [0, {MAX_SEED}] (2^32 - 1)")


def check_device(key: str, value: str, allow_auto: bool = True) -> None:
    """`auto` (when allowed), `cpu`, `cuda` or `cuda:N`; whether it exists is asked at run time."""
    if not DEVICE_PATTERN.match(value) or (value == "auto" and not allow_auto):
        raise ConfigError(key, value, ("auto, " if allow_auto else "") + "cpu, cuda or cuda:N")


def resolve_device(value: str, key: str = "device") -> torch.device:
    """The torch device for a validated device string, checked against this machine: `auto` is
    cuda when present, else cpu; `cuda` on a machine without one is a one-line ConfigError."""
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(key, value, "no CUDA device is available on this machine; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(key, value, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
