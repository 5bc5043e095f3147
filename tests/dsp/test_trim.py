"""Ending a one-shot (sda.dsp.trim): cut where the sound falls silent, faded to zero, the same in
any batch."""

import math

import pytest
import torch

from sda.dsp.trim import fade_out_curve, sound_end, trim_tail
from tests.helpers import assert_batch_consistency

RATE = 48000
FADE = 480  # 10 ms


def decaying_tone(seconds: float, decay_s: float, total_s: float = 1.0, freq_hz: float = 200.0) -> torch.Tensor:
    """`[1, samples]`: a tone decaying exponentially for `seconds`, then exact silence, `total_s` long."""
    t = torch.arange(round(total_s * RATE), dtype=torch.float64) / RATE
    x = torch.sin(2 * math.pi * freq_hz * t) * torch.exp(-t / decay_s) * (t < seconds)
    return (0.9 * x).float()[None]


def db(x: torch.Tensor | float) -> float:
    return 20 * math.log10(float(x))


def test_the_sound_ends_where_it_falls_below_the_threshold_re_its_peak():
    tone = decaying_tone(1.0, 0.05)  # -60 dB re the start after 0.05 * ln(1000) = 0.345 s
    end = int(sound_end(tone[None], -60.0)[0])
    assert end / RATE == pytest.approx(0.05 * math.log(1000), abs=0.003)
    assert db(tone[0, end:].abs().max() / tone.abs().max()) <= -60.0


SILENCE = 240  # 5 ms


def test_a_trimmed_hit_fades_where_its_sound_ends_then_ends_in_silence_with_its_body_untouched():
    tone = decaying_tone(1.0, 0.05)
    out, lengths = trim_tail(tone[None], -60.0, FADE, SILENCE)
    length = int(lengths[0])
    end = int(sound_end(tone[None], -60.0)[0])
    assert length == end + FADE + SILENCE
    assert torch.equal(out[0, :, :end], tone[:, :end]), "nothing before the fade is changed"
    faded = out[0, 0, end : end + FADE] / tone[0, end : end + FADE]
    assert torch.allclose(faded, fade_out_curve(FADE, "cpu", torch.float32), atol=1e-6)
    assert torch.all(out[0, :, end + FADE :] == 0), "the last 5 ms, and everything after, are silent"
    assert db(out[0, :, end:].abs().max() / tone.abs().max()) <= -60.0


def test_the_fade_is_a_raised_cosine_from_just_under_one_to_zero():
    curve = fade_out_curve(FADE, "cpu", torch.float32)
    assert curve.shape == (FADE,) and curve[-1] == 0.0 and 0.99 < curve[0] < 1.0
    assert torch.all(curve[1:] <= curve[:-1])
    assert curve[FADE // 2 - 1] == pytest.approx(0.5, abs=0.01)


def test_a_hit_that_never_falls_silent_is_cut_at_the_limit_and_faded_all_the_same():
    drone = decaying_tone(1.0, 100.0)
    out, lengths = trim_tail(drone[None], -60.0, FADE, SILENCE, max_frames=24000)
    assert int(lengths[0]) == 24000
    assert torch.all(out[0, :, 24000 - SILENCE :] == 0)
    assert torch.equal(out[0, :, : 24000 - SILENCE - FADE], drone[:, : 24000 - SILENCE - FADE])
    jumps = out[0, 0, 1:24000].sub(out[0, 0, :23999]).abs()
    assert jumps[-SILENCE - FADE :].max() <= jumps[: -SILENCE - FADE].max(), "the fade steps no harder than the drone"


def test_silence_is_one_fade_and_its_silence_long_and_stays_silent():
    out, lengths = trim_tail(torch.zeros(1, 2, 4800), -60.0, FADE, SILENCE)
    assert int(lengths[0]) == FADE + SILENCE and torch.all(out == 0)


@pytest.mark.determinism
def test_each_hit_is_trimmed_the_same_alone_and_in_a_batch():
    hits = torch.stack([decaying_tone(s, d) for s, d in [(0.05, 0.01), (0.4, 0.08), (1.0, 100.0), (0.2, 0.02)]])
    hits[1] *= 0.01  # a quiet one: its threshold is its own peak's

    def trim(batch: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out, lengths = trim_tail(batch, -60.0, FADE, SILENCE)
        return [(out[i], lengths[i]) for i in range(batch.shape[0])]

    results = assert_batch_consistency(trim, hits)
    lengths = [int(r[1]) for r in results]
    assert len(set(lengths)) == 4, lengths
