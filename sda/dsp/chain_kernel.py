"""The locked start's frame-to-frame chain (sda.dsp.phase) as one GPU kernel.

Each frame's phase is the previous frame's, gathered at each bin's origin and advanced:
`phase[n] = remainder(phase[n - 1][origin[n]] + advance[n], 2 pi)`. In torch that is three
kernel launches per frame, bound by launch latency on a GPU (4.8 s for the 56 000 frames of a
600 s file on an H200). Here one program per item walks its frames, a thread per group of bins,
with a barrier between frames. The arithmetic is torch's, operation for operation: a float32
add, then the exact `fmod` and torch.remainder's sign fix, so the phases are torch's to the last
bit (tests/test_gpu.py checks it on a GPU; on a CPU, Triton's interpreter checks the kernel's
logic against torch).

Triton is what torch compiles its own GPU kernels with and comes with torch's CUDA builds. Where
it is missing, or cannot build the kernel, `follow_chain_on_gpu` returns None and the caller
follows the chain in torch.
"""

from __future__ import annotations

import logging
import math
import os

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # a torch without Triton (CPU builds, some platforms): torch follows the chain
    triton = None

log = logging.getLogger(__name__)

# Triton's interpreter (TRITON_INTERPRET=1, tensors on the CPU) runs kernels with numpy, which has
# no libdevice; its `%` on floats is numpy's fmod, the same exact operation.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_broken: list[str] = []  # why the kernel could not be used in this process, once known


if triton is not None:

    @triton.jit
    def _chain_kernel(
        phases_ptr,  # [items, steps + 1, bins] float32: row 0 holds the first phases, filled in here
        origin_ptr,  # [items, steps, bins] int64
        advance_ptr,  # [items, steps, bins] float32
        steps,
        bins,
        two_pi,
        BLOCK: tl.constexpr,
        INTERPRET: tl.constexpr,
    ):
        item = tl.program_id(0).to(tl.int64)
        offsets = tl.arange(0, BLOCK)
        mask = offsets < bins
        phases = phases_ptr + item * (steps + 1) * bins
        origins = origin_ptr + item * steps * bins
        advances = advance_ptr + item * steps * bins
        for n in range(steps):
            origin = tl.load(origins + n * bins + offsets, mask=mask, other=0)
            advance = tl.load(advances + n * bins + offsets, mask=mask, other=0.0)
            # .cg: from L2, where the previous frame's stores went (not a stale L1 line)
            previous = tl.load(phases + n * bins + origin, mask=mask, other=0.0, cache_modifier=".cg")
            total = previous + advance
            if INTERPRET:
                remainder = total % two_pi
            else:
                remainder = libdevice.fmod(total, two_pi)
            remainder = tl.where((remainder != 0) & (remainder < 0), remainder + two_pi, remainder)
            tl.store(phases + (n + 1) * bins + offsets, remainder, mask=mask)
            tl.debug_barrier()  # the whole frame is stored before any bin of the next reads it


def kernel_available(device: torch.device) -> bool:
    """Whether `follow_chain_on_gpu` can run on `device`."""
    return triton is not None and not _broken and (device.type == "cuda" or (INTERPRETED and device.type == "cpu"))


def follow_chain_on_gpu(first: torch.Tensor, origin: torch.Tensor, advance: torch.Tensor) -> torch.Tensor | None:
    """Phases `[items, steps, F]` of the frames after `first` `[items, F]` (see the module
    docstring; `origin` int64 and `advance` float32, `[items, steps, F]`), or None where the
    kernel cannot run."""
    if not kernel_available(first.device) or first.dtype != torch.float32:
        return None
    items, steps, bins = advance.shape
    phases = torch.empty(items, steps + 1, bins, dtype=first.dtype, device=first.device)
    phases[:, 0] = first
    try:
        _chain_kernel[(items,)](
            phases,
            origin.contiguous(),
            advance.contiguous(),
            steps,
            bins,
            # torch.remainder takes its Python-float divisor as a float32, as the kernel does
            float(torch.tensor(2 * math.pi, dtype=torch.float32)),
            BLOCK=triton.next_power_of_2(bins),
            INTERPRET=INTERPRETED,
            num_warps=8,
        )
    except Exception as error:  # a Triton that cannot build or run the kernel: torch gives the same phases
        _broken.append(f"{type(error).__name__}: {error}")
        log.warning("the GPU chain kernel is not usable here; following the chain in torch (%s)", _broken[0])
        return None
    return phases[:, 1:]
