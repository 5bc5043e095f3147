"""Seeds: every random draw of an output comes from generators made from its seed.

Left seeds are what users type: integers in [0, 2^32). A dual_seed output's right channel uses
`right_seed(seed) = 2^32 + mix32(seed)`, where mix32 is a bijection of 32-bit integers. So a
right seed is never any left seed (it is >= 2^32), two different left seeds never share a right
seed, and in a seed sweep file k's right channel is unrelated to file k+1's left channel (which
"right = seed + 1" would make identical).

torch's CPU generator seeds its Mersenne Twister with the low 32 bits of a seed only
(`manual_seed(2**32 + k)` draws what `manual_seed(k)` draws), so a right seed passed to
`manual_seed` would replay the left channel of seed mix32(seed) (seed 0: its own left channel).
`generator` therefore gives a seed of 2^32 or more the state of MT19937's reference
`init_by_array` over the seed's two 32-bit halves, written into the torch generator.
"""

from __future__ import annotations

import numpy as np
import torch

SEED_SPACE = 2**32
# Random starting phases (phase.init=random) use the stream of seed ^ PHASE_STREAM: XOR with a
# constant above 2^33 is a bijection that keeps every voice's phase stream apart from every
# latent stream (left seeds < 2^32, right seeds < 2^33) and from each other.
PHASE_STREAM = 0x5DA5EED << 34  # < 2^64, the generator's seed range
# source=corpus draws its training windows from the stream of seed ^ CORPUS_STREAM, apart from
# every latent and phase stream in the same way.
CORPUS_STREAM = 0xC0A9D5 << 36
_MASK32 = 0xFFFFFFFF
# torch's CPU generator state: the initial seed (u64), left (i32), seeded (i32), next (u64), then
# the 624 Mersenne Twister words, each stored as a u64.
_MT_WORDS = 624
_MT_OFFSET = 24


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
    """A CPU generator for one item, for seeds in [0, 2^64). Latents are drawn on the CPU
    whatever the device, so an output depends on its seed and config, not on the batch it was
    in or the device. Seeds of 2^32 or more get their own streams (see the module docstring)."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed={seed}: allowed [0, 2^64)")
    low = seed & _MASK32
    g = torch.Generator(device="cpu").manual_seed(low)
    if seed < SEED_SPACE:
        return g
    state = g.get_state().numpy().copy()
    words = state[_MT_OFFSET : _MT_OFFSET + 8 * _MT_WORDS].view(np.uint64)
    if not np.array_equal(words, np.random.RandomState(low).get_state()[1]):
        raise RuntimeError(f"torch {torch.__version__}: unexpected CPU generator state layout; cannot seed {seed}")
    words[:] = np.random.RandomState([low, seed >> 32]).get_state()[1]
    state[:8] = np.frombuffer(np.uint64(seed).tobytes(), np.uint8)
    g.set_state(torch.from_numpy(state))
    return g


def sample_latents(seed: int, count: int, latent_dim: int) -> torch.Tensor:
    """`[count, latent_dim]` standard-normal latents for one item. Drawn in order, so the first k
    rows are the same for any count >= k: a longer render of a seed starts like the shorter one."""
    return torch.randn(count, latent_dim, generator=generator(seed))


def phase_generator(seed: int) -> torch.Generator:
    """The generator of a voice's random starting phases: its own stream, apart from every
    voice's latents and from every other voice's phases (right channels included)."""
    return generator(seed ^ PHASE_STREAM)


def corpus_generator(seed: int) -> torch.Generator:
    """The generator of an item's corpus draws (source=corpus): its own stream, apart from every
    voice's latents and phases."""
    return generator(seed ^ CORPUS_STREAM)
