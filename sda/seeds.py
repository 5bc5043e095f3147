"""Seeds: every random draw of an output comes from generators made from its seed.

Left seeds are what users type: integers in [0, 2^32). A dual_seed output's right channel uses
`right_seed(seed) = 2^32 + mix32(seed)`, where mix32 is a bijection of 32-bit integers. So a
right seed is never any left seed (it is >= 2^32), two different left seeds never share a right
seed, and in a seed sweep file k's right channel is unrelated to file k+1's left channel (which
"right = seed + 1" would make identical). torch.Generator takes seeds up to 2^64 - 1.
"""

from __future__ import annotations

import torch

SEED_SPACE = 2**32
_MASK32 = 0xFFFFFFFF


def mix32(value: int) -> int:
    """A bijective 32-bit integer mixer (xor-shift and odd multiplications are each invertible)."""
    x = value & _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def right_seed(seed: int) -> int:
    """The right channel's seed for a dual_seed output whose left seed is `seed`."""
    if not 0 <= seed < SEED_SPACE:
        raise ValueError(f"seed={seed}: allowed [0, 2^32)")
    return SEED_SPACE + mix32(seed)


def generator(seed: int) -> torch.Generator:
    """A CPU generator for one item. Latents are drawn on the CPU whatever the device, so an
    output depends on its seed and config, not on the batch it was in or the device."""
    return torch.Generator(device="cpu").manual_seed(seed)


def sample_latents(seed: int, count: int, latent_dim: int) -> torch.Tensor:
    """`[count, latent_dim]` standard-normal latents for one item. Drawn in order, so the first k
    rows are the same for any count >= k: a longer render of a seed starts like the shorter one."""
    return torch.randn(count, latent_dim, generator=generator(seed))
