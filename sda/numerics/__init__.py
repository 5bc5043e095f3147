"""Pinned CPU numerics: a CPU render's bytes depend on its seed and config, not on the batch it
was made in, the thread count or the x86-64 processor (Intel or AMD, AVX2 or AVX-512), for the
same library versions.

Imported first by `sda/__init__.py`, so it runs before any of sda's code computes anything, and
pins three libraries before their first computation:

- MKL (torch's CPU FFTs and matrix products): conditional numerical reproducibility set to
  COMPATIBLE through the function torch exports. On AVX-512 Intel processors MKL's FFT otherwise
  takes code paths that depend on the number of transforms in a call, so an item made alone
  differs from the same item made in a batch (by up to 1.6e-3 after Griffin-Lim, measured on a
  Xeon). COMPATIBLE is the only branch that is the same on Intel and AMD: AVX2 and AVX512 are
  refused on AMD. It costs speed: its float64 matrix products (the decoder) run at about half
  speed (`python -m sda.bench`).
- ATen's vectorized kernels: `ATEN_CPU_CAPABILITY=avx2` (AVX-512 kernels sum in another order).
- oneDNN's kernels: `ONEDNN_MAX_CPU_ISA=AVX2`.

Each is also written into `os.environ`, so child processes (joblib/loky, submitit,
multiprocessing spawn) pin themselves at their own start, before they import sda. A value the
user set is honoured, never overwritten. Where the pin is not in force (a user's own setting, or
torch ops that ran before sda was imported) one warning line says what to do. Nothing happens on a
processor that is not x86-64, and the MKL step is skipped where torch has no MKL.

`numerics_status()` is what a sidecar records; `python -m sda.numerics` prints it with the
sha256 of a short reference render, to compare two machines by eye.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# The pins, spelled as each library reads its environment variable (ATen's is case-sensitive).
MKL_VARIABLE, MKL_PIN = "MKL_CBWR", "COMPATIBLE"
ATEN_VARIABLE, ATEN_PIN = "ATEN_CPU_CAPABILITY", "avx2"
ONEDNN_VARIABLE, ONEDNN_PIN = "ONEDNN_MAX_CPU_ISA", "AVX2"
# oneDNN also reads its older name when the new one is unset: a user's value there is theirs.
ONEDNN_OLD_VARIABLE = "DNNL_MAX_CPU_ISA"
# What get_cpu_capability() reports once the ATen pin is in force.
ATEN_PINNED_CAPABILITY = "AVX2"

# mkl_cbwr.h (oneMKL 2024): branch codes, the option that reads the branch, and return codes.
MKL_CBWR_BRANCH = 1
MKL_CBWR_COMPATIBLE = 3
MKL_CBWR_SUCCESS = 0
MKL_CBWR_ERR_MODE_CHANGE_FAILURE = -8  # MKL has already computed something: its branch is fixed
MKL_BRANCH_NAMES = {
    0: "OFF",
    1: "BRANCH_OFF",
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    5: "SSE3",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    11: "AVX512_MIC",
    12: "AVX512",
}

X86_64_MACHINES = ("x86_64", "amd64")


def _mkl_cbwr_functions() -> tuple[Any, Any] | None:
    """(set, get) of MKL's reproducibility branch, or None where torch has no MKL.

    Pip wheels link MKL statically into libtorch_cpu and export its service functions
    `mkl_serv_cbwr_set/get`; a torch linked against a shared MKL exposes the public names."""
    if not torch.backends.mkl.is_available():
        return None
    # dlsym through libtorch_cpu's handle also searches the libraries it links, a shared MKL too.
    for path in sorted((Path(torch.__file__).parent / "lib").glob("*torch_cpu.*")):
        handle = ctypes.CDLL(str(path))
        for set_name, get_name in (("mkl_serv_cbwr_set", "mkl_serv_cbwr_get"), ("mkl_cbwr_set", "mkl_cbwr_get")):
            if hasattr(handle, set_name) and hasattr(handle, get_name):
                set_branch, get_branch = getattr(handle, set_name), getattr(handle, get_name)
                set_branch.argtypes, set_branch.restype = [ctypes.c_int], ctypes.c_int
                get_branch.argtypes, get_branch.restype = [ctypes.c_int], ctypes.c_int
                return set_branch, get_branch
    return None


def _user_setting(variable: str, pin: str, case_sensitive: bool = False) -> str | None:
    """The user's own value of `variable` when it differs from the pin, else None."""
    value = os.environ.get(variable)
    if value is None:
        return None
    same = value == pin if case_sensitive else value.upper() == pin.upper()
    return None if same else value


@dataclass
class _Pin:
    """What `pin_cpu_numerics` did, kept for `numerics_status`."""

    applicable: bool = False
    mkl: tuple[Any, Any] | None = None
    problems: list[str] = field(default_factory=list)


_pin = _Pin()


def pin_cpu_numerics() -> list[str]:
    """Pin MKL, ATen and oneDNN as the module docstring says; returns why the pin is not in
    force (empty when it is). Safe to call again: a pin already in force stays."""
    _pin.applicable = platform.machine().lower() in X86_64_MACHINES
    _pin.problems = []
    if not _pin.applicable:
        return []
    problems, advice = [], []
    # A user's own setting per pin, by the variable that holds it (oneDNN's may use its old name).
    onednn_name = ONEDNN_VARIABLE if ONEDNN_VARIABLE in os.environ else ONEDNN_OLD_VARIABLE
    overrides = {
        MKL_VARIABLE: (MKL_VARIABLE, _user_setting(MKL_VARIABLE, MKL_PIN)),
        ATEN_VARIABLE: (ATEN_VARIABLE, _user_setting(ATEN_VARIABLE, ATEN_PIN, case_sensitive=True)),
        ONEDNN_VARIABLE: (onednn_name, _user_setting(onednn_name, ONEDNN_PIN)),
    }
    for name, value in overrides.values():
        if value is not None:
            problems.append(f"{name}={value} is set")
            advice.append(f"unset {name}")
    overridden = {variable for variable, (_, value) in overrides.items() if value is not None}
    # ATen's AVX2 kernels would stop a processor without AVX2 (and FMA) with an illegal
    # instruction: leave ATen to choose there.
    has_avx2 = bool(torch.cpu._is_avx2_supported())
    if not has_avx2:
        problems.append("this processor has no AVX2")
    if MKL_VARIABLE not in overridden:
        os.environ[MKL_VARIABLE] = MKL_PIN
    if ATEN_VARIABLE not in overridden and has_avx2:
        os.environ[ATEN_VARIABLE] = ATEN_PIN
    if ONEDNN_VARIABLE not in overridden:
        os.environ[ONEDNN_VARIABLE] = ONEDNN_PIN

    ran_before = False
    _pin.mkl = _mkl_cbwr_functions()
    if _pin.mkl is not None and MKL_VARIABLE not in overridden:
        code = _pin.mkl[0](MKL_CBWR_COMPATIBLE)
        if code == MKL_CBWR_ERR_MODE_CHANGE_FAILURE:
            ran_before = True
            problems.append(f"MKL ran before sda was imported (branch {mkl_branch()})")
        elif code != MKL_CBWR_SUCCESS:
            problems.append(f"MKL refused the COMPATIBLE branch (code {code})")
            advice.append(f"set {MKL_VARIABLE}={MKL_PIN} before starting Python")
    # The capability is fixed at ATen's first dispatch; if ops ran before this, it stays as it was.
    capability = torch.backends.cpu.get_cpu_capability()
    if has_avx2 and ATEN_VARIABLE not in overridden and capability != ATEN_PINNED_CAPABILITY:
        ran_before = True
        problems.append(f"torch ran before sda was imported (ATen capability {capability})")
    if ran_before:
        advice.append("import sda before running any torch operation")
    _pin.problems = problems
    if advice:
        log.warning(
            "sda: CPU numerics not pinned (%s): CPU renders may differ in their last bits with the batch, "
            "thread count or processor; to pin them, %s",
            "; ".join(problems),
            " and ".join(advice),
        )
    return problems


def mkl_branch() -> str | None:
    """MKL's reproducibility branch now in force, by its mkl_cbwr.h name; None without MKL."""
    if _pin.mkl is None:
        return None
    code = _pin.mkl[1](MKL_CBWR_BRANCH)
    return MKL_BRANCH_NAMES.get(code, str(code))


@functools.cache
def cpu_model() -> str:
    """The processor's marketing name where the system says it, else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Bound:
    """How far two renders of one output may differ where bytes may: peak difference and
    log-spectral distance (sda.dsp.difference)."""

    peak_dbfs: float
    lsd_db: float

    def __str__(self) -> str:
        return f"peak difference at most {self.peak_dbfs:g} dBFS, log-spectral distance at most {self.lsd_db:g} dB"


# The determinism contract's bounds (README, Determinism). Phase reconstruction turns a difference
# of one float32 rounding step in a spectrogram into another waveform of the same sound: over 24
# seeds of each chunking mode, `python -m sda.numerics --rounding-sensitivity 24` measured with the
# shipped (format 3) model a peak difference of median -53.3 / -53.1 dBFS (crossfade /
# latent_interp), worst -18.2 dBFS (latent_interp seed 11), and a log-spectral distance of median
# 0.054 dB, worst 0.42 dB (the earlier, format 2 model: worst -21.7 dBFS, 0.42 dB). Another
# device's or another batch's arithmetic is such a difference, so both bounds rest on that worst
# case, with a margin.
# GPU against CPU, worst measured on an H200 (torch 2.11.0+cu130, `pytest -m gpu -s
# tests/test_gpu.py`) with the format 2 model: -21.9 dBFS, 0.41 dB (its most sensitive seed).
# Not yet measured with the format 3 model (no GPU was at hand).
GPU_VS_CPU = Bound(peak_dbfs=-15.0, lsd_db=0.75)
# On a GPU, an item alone against in a batch, worst measured on the H200: -77.8 dBFS, 0.018 dB;
# the few values a batch changes are a rounding difference too, so the promise is the same.
GPU_BATCH = Bound(peak_dbfs=-15.0, lsd_db=0.75)


def expected_agreement(original: dict[str, Any] | None, current: dict[str, Any]) -> Bound | None:
    """What a render with numerics `current` promises against one made with `original` (a
    sidecar's `numerics`): None for the same bytes (both CPU with the pin in force), else a bound.
    Unpinned CPU renders are promised nothing beyond the GPU-against-CPU bound either."""
    if not original:
        return GPU_VS_CPU
    kinds = {original.get("device_kind"), current.get("device_kind")}
    if kinds == {"cpu"}:
        return None if original.get("pinned") and current.get("pinned") else GPU_VS_CPU
    if kinds == {"cuda"}:
        return GPU_BATCH
    return GPU_VS_CPU


def numerics_status(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What decides a render's last bits on this machine, as plain JSON values for a sidecar.

    `pinned` says whether the CPU pin is in force (False where it does not apply: a processor
    that is not x86-64); `not_pinned_because` lists why not. A CUDA device's name and CUDA
    version are added for a GPU render, whose bytes the CPU pin does not decide."""
    device = torch.device(device)
    status: dict[str, Any] = {
        "device_kind": device.type,
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr_branch": mkl_branch(),
        "onednn_max_cpu_isa": os.environ.get(ONEDNN_VARIABLE) or os.environ.get(ONEDNN_OLD_VARIABLE),
        "torch_threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "pinned": _pin.applicable and not _pin.problems,
        "not_pinned_because": list(_pin.problems) if _pin.applicable else ["not an x86-64 processor"],
    }
    if device.type == "cuda":
        status["gpu"] = torch.cuda.get_device_name(device)
        status["cuda_version"] = torch.version.cuda
    return status


pin_cpu_numerics()
