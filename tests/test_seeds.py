"""Seed derivation: per-item randomness, and dual_seed's right seeds."""

from __future__ import annotations

import pytest
import torch

from sda.seeds import SEED_SPACE, generator, mix32, phase_generator, right_seed, sample_latents


def test_mix32_is_a_bijection_on_a_large_sample():
    values = range(0, 2**20)
    mixed = {mix32(v) for v in values}
    assert len(mixed) == len(values)
    assert all(0 <= m < SEED_SPACE for m in list(mixed)[:1000])


def test_right_seeds_never_equal_any_left_seed_or_each_other_in_a_sweep():
    sweep = range(0, 100_000)
    rights = [right_seed(s) for s in sweep]
    assert len(set(rights)) == len(rights)
    assert min(rights) >= SEED_SPACE  # a left seed is always < 2^32
    # the naive "seed + 1" would make file k's right channel file k+1's left channel
    assert not set(rights) & set(sweep)
    assert right_seed(2**32 - 1) < 2**64


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_right_seed_rejects_seeds_outside_the_left_range(bad):
    with pytest.raises(ValueError):
        right_seed(bad)


def test_latents_depend_only_on_the_seed_and_longer_draws_extend_shorter_ones():
    torch.manual_seed(123)  # the global RNG must not matter
    a = sample_latents(7, 3, 64)
    torch.manual_seed(999)
    b = sample_latents(7, 10, 64)
    assert torch.equal(a, b[:3])
    assert not torch.equal(sample_latents(8, 3, 64), a)


def test_phase_streams_are_apart_from_latent_streams_and_from_each_other():
    # phase.init=random: a right channel's starting phases must not replay any left seed's, and
    # no voice's phases may replay a latent stream (a right seed's low 32 bits are a left seed).
    seeds = [0, 1, 7, right_seed(0), right_seed(7)]
    phases = [torch.rand(64, generator=phase_generator(s)) for s in seeds]
    latents = [torch.rand(64, generator=generator(s)) for s in seeds]
    for i, a in enumerate(phases):
        assert all(not torch.equal(a, b) for b in phases[i + 1 :] + latents)
    assert torch.equal(phases[3], torch.rand(64, generator=phase_generator(right_seed(0))))  # a stream, not noise
