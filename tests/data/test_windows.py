import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sda.data.folder import AudioClip
from sda.data.windows import (
    Augmentation,
    WindowSampler,
    clip_level_dbfs,
    silence_reason,
    speed_ratio,
    split_by_file,
    window_starts,
)
from sda.errors import ConfigError

RATE = 48000


def clip(name: str, audio: np.ndarray) -> AudioClip:
    return AudioClip(Path(name), np.asarray(audio, dtype=np.float32), RATE, 1)


def noise(seconds: float, rms: float = 0.1, seed: int = 0) -> np.ndarray:
    return (rms * np.random.default_rng(seed).standard_normal(round(seconds * RATE))).astype(np.float32)


def sine(freq_hz: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq_hz * np.arange(round(seconds * RATE)) / RATE)).astype(np.float32)


def peak_frequency_hz(window: torch.Tensor) -> float:
    """Strongest frequency, refined by a parabola through the log-magnitudes around the peak bin."""
    x = window.double().numpy()
    padded = 4 * x.size
    spectrum = np.log(np.abs(np.fft.rfft(x * np.hanning(x.size), padded)) + 1e-12)
    k = int(np.argmax(spectrum))
    a, b, c = spectrum[k - 1 : k + 2]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / padded


def all_epoch_windows(sampler: WindowSampler, seed: int, batch_size: int = 16) -> torch.Tensor:
    return torch.cat(list(sampler.epoch(torch.Generator().manual_seed(seed), batch_size)))


def match_rows(windows: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """For each row of `windows`, the index of the `reference` row it is a scaled copy of."""
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    similarity = unit(windows) @ unit(reference).T
    best = similarity.argmax(dim=1)
    assert torch.all(similarity.max(dim=1).values > 0.9999)
    return best


GAIN_ONLY = Augmentation(jitter=False, gain_db=6.0, semitone_steps=(0,), p_varispeed=0.0)


# ------------------------------------------------------------------ window_starts


def test_half_silent_clip_keeps_about_half_the_windows():
    audio = np.concatenate([noise(2.0, rms=1e-4), noise(2.0, rms=0.1)])  # -80 dBFS, then -20 dBFS
    window, hop = 4800, 2400

    starts = window_starts(audio, window, hop, silence_dbfs=-60.0)

    all_starts = np.arange(0, audio.size - window + 1, hop)
    assert all_starts.size == 79
    # kept: exactly the windows that reach into the loud half (any overlap lifts RMS past -60)
    np.testing.assert_array_equal(starts, all_starts[all_starts + window > 2 * RATE])
    assert 38 <= starts.size <= 42


def test_silence_threshold_is_the_window_rms_in_dbfs():
    window = 1000
    just_above = np.full(5000, 10 ** (-59.9 / 20), dtype=np.float32)
    just_below = np.full(5000, 10 ** (-60.1 / 20), dtype=np.float32)

    assert window_starts(just_above, window, 500, -60.0).tolist() == [0, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000]
    assert window_starts(just_below, window, 500, -60.0).size == 0


def test_window_grid_counts_whole_windows_only():
    starts = window_starts(noise(1.0), 4800, 1000)
    assert starts.tolist() == list(range(0, 48000 - 4800 + 1, 1000))


@pytest.mark.parametrize("length, expected", [(999, [0]), (500, [0]), (499, [0]), (1, [0]), (0, [])])
def test_a_clip_shorter_than_a_window_is_one_window_at_the_start_however_short(length, expected):
    assert window_starts(noise(length / RATE), 1000, 500).tolist() == expected


def test_a_short_silent_clip_gives_no_window():
    assert window_starts(np.zeros(800, dtype=np.float32), 1000, 500).size == 0


def decaying_hit(seconds: float, peak: float, decay_s: float) -> np.ndarray:
    """A noise burst with an instant attack and an exponential decay (a brush, a hat)."""
    t = np.arange(round(seconds * RATE)) / RATE
    burst = np.random.default_rng(3).standard_normal(t.size) * np.exp(-t / decay_s)
    return (peak * burst / np.abs(burst).max()).astype(np.float32)


def test_a_short_hit_is_judged_by_its_loudest_50_ms_not_by_its_quiet_tail():
    # A quiet brush: peak -40 dBFS, 20 ms decay over 0.9 s. Its RMS over its own length is about
    # -62 dBFS (its tail drags it down), its loudest 50 ms about -53 dBFS: it holds sound.
    brush = decaying_hit(0.9, 10 ** (-40 / 20), 0.02)
    mean_dbfs = 10 * np.log10(np.mean(np.square(brush, dtype=np.float64)))
    assert mean_dbfs < -60.0
    assert -60.0 < clip_level_dbfs(brush, RATE) < -45.0
    assert window_starts(brush, RATE, RATE // 2, -60.0, RATE).tolist() == [0]
    # the same hit 20 dB quieter is silence
    assert window_starts(brush / 10, RATE, RATE // 2, -60.0, RATE).size == 0


def test_a_50_ms_hit_is_judged_over_its_whole_length():
    hit = decaying_hit(0.05, 0.5, 0.01)
    level = clip_level_dbfs(hit, RATE)
    assert level == pytest.approx(10 * np.log10(np.mean(np.square(hit, dtype=np.float64))), abs=1e-9)
    assert window_starts(hit, RATE, RATE // 2, -60.0, RATE).tolist() == [0]


def test_a_silent_clip_is_given_a_reason_with_its_level():
    short = silence_reason(np.full(2400, 1e-4, dtype=np.float32), RATE, RATE // 2, -60.0, RATE)
    assert short.startswith("silent: its loudest 50 ms is at -80.0 dBFS") and "dataset.silence_dbfs=-60" in short
    long = silence_reason(np.full(2 * RATE, 1e-4, dtype=np.float32), RATE, RATE // 2, -60.0, RATE)
    assert long.startswith("silent: its loudest 1 s window is at -80.0 dBFS RMS")


# ------------------------------------------------------------------ split_by_file


def ten_clips() -> list[AudioClip]:
    return [clip(f"take_{i}.wav", noise(0.1, seed=i)) for i in range(10)]


def test_split_is_by_file_deterministic_disjoint_and_complete():
    clips = ten_clips()

    train, validation = split_by_file(clips, 0.2, seed=3)
    again = split_by_file(clips, 0.2, seed=3)

    assert [c.path for c in again[0]] == [c.path for c in train] and [c.path for c in again[1]] == [
        c.path for c in validation
    ]
    assert len(validation) == 2 and len(train) == 8
    assert {c.path for c in train}.isdisjoint({c.path for c in validation})
    assert {c.path for c in train} | {c.path for c in validation} == {c.path for c in clips}
    assert all(any(c is original for original in clips) for c in train + validation)  # whole files, untouched
    # each side keeps the input order
    order = [c.path for c in clips]
    assert [order.index(c.path) for c in train] == sorted(order.index(c.path) for c in train)


def test_split_depends_on_the_seed():
    clips = ten_clips()
    splits = {tuple(c.path for c in split_by_file(clips, 0.2, seed)[1]) for seed in range(6)}
    assert len(splits) > 1


@pytest.mark.parametrize(
    "count, fraction, expected_validation", [(2, 0.15, 1), (3, 0.05, 1), (4, 0.5, 2), (5, 0.9, 4), (40, 0.15, 6)]
)
def test_split_keeps_at_least_one_file_on_each_side(count, fraction, expected_validation):
    clips = [clip(f"{i}.wav", noise(0.05, seed=i)) for i in range(count)]
    train, validation = split_by_file(clips, fraction, seed=0)
    assert (len(train), len(validation)) == (count - expected_validation, expected_validation)


def test_a_single_clip_is_split_in_time_with_a_warning(caplog):
    audio = noise(10.0)
    caplog.set_level(logging.WARNING, logger="sda.data.windows")

    (train,), (validation,) = split_by_file([clip("only.wav", audio)], 0.15, seed=0)

    assert validation.audio.size == round(1.5 * RATE) and train.audio.size == round(8.5 * RATE)
    np.testing.assert_array_equal(np.concatenate([train.audio, validation.audio]), audio)
    assert any("not independent" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("seconds, validation_seconds", [(3.0, 1.0), (2.0, 1.0)])
def test_single_clip_validation_is_at_least_one_second(seconds, validation_seconds):
    (train,), (validation,) = split_by_file([clip("only.wav", noise(seconds))], 0.15, seed=0)
    assert validation.audio.size == round(validation_seconds * RATE)
    assert train.audio.size == round(seconds * RATE) - validation.audio.size


@pytest.mark.parametrize("seconds", [1.99, 0.3, 0.05])
def test_a_single_clip_under_two_seconds_is_not_cut_from_its_tail(seconds, caplog):
    audio = noise(seconds)
    caplog.set_level(logging.WARNING, logger="sda.data.windows")
    (train,), validation = split_by_file([clip("hit.wav", audio)], 0.15, seed=0)
    assert validation == [] and train.audio.size == audio.size
    assert any("not independent" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ WindowSampler


def test_sampler_length_and_fixed_windows_follow_the_grid_with_short_clips_zero_padded():
    long_clip, short_clip = noise(1.0, seed=1), noise(0.7 * 4800 / RATE, seed=2)
    sampler = WindowSampler([clip("a", long_clip), clip("b", short_clip)], 4800, 2400, -60.0, Augmentation.none())

    fixed = sampler.fixed_windows()

    assert len(sampler) == 19 + 1 and fixed.shape == (20, 4800)
    np.testing.assert_array_equal(fixed[1].numpy(), long_clip[2400:7200])
    np.testing.assert_array_equal(fixed[19, : short_clip.size].numpy(), short_clip)
    assert torch.all(fixed[19, short_clip.size :] == 0)


def test_no_augmentation_gives_exactly_the_fixed_windows_shuffled():
    sampler = WindowSampler(
        [clip("a", noise(1.0, seed=1)), clip("b", noise(0.5, seed=2))], 4800, 2400, -60.0, Augmentation.none()
    )
    fixed = sampler.fixed_windows()

    epoch = all_epoch_windows(sampler, seed=0)

    assert epoch.shape == fixed.shape and not torch.equal(epoch, fixed)  # shuffled
    assert sorted(row.numpy().tobytes() for row in epoch) == sorted(row.numpy().tobytes() for row in fixed)


def test_an_epoch_covers_every_window_once_in_batches_of_the_requested_size():
    sampler = WindowSampler(
        [clip("a", noise(2.0, seed=1)), clip("b", noise(1.0, seed=2))], 4800, 2400, -60.0, GAIN_ONLY
    )

    batches = list(sampler.epoch(torch.Generator().manual_seed(0), batch_size=16))

    assert len(sampler) == 39 + 19 and [b.shape[0] for b in batches] == [16, 16, 16, 10]
    assert all(b.shape[1] == 4800 and b.dtype == torch.float32 for b in batches)
    matched = match_rows(torch.cat(batches), sampler.fixed_windows())
    assert sorted(matched.tolist()) == list(range(58))


def test_epochs_are_deterministic_for_a_seed_and_differ_between_seeds():
    sampler = WindowSampler([clip("a", noise(2.0, seed=1))], 4800, 2400, -60.0, Augmentation())

    first, again, other = all_epoch_windows(sampler, 5), all_epoch_windows(sampler, 5), all_epoch_windows(sampler, 6)

    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_consecutive_epochs_from_one_generator_differ():
    sampler = WindowSampler([clip("a", noise(2.0, seed=1))], 4800, 2400, -60.0, Augmentation())
    generator = torch.Generator().manual_seed(0)
    first = torch.cat(list(sampler.epoch(generator, 8)))
    second = torch.cat(list(sampler.epoch(generator, 8)))
    assert not torch.equal(first, second)


def test_gain_is_uniform_within_plus_minus_gain_db():
    sampler = WindowSampler([clip("a", noise(5.0, seed=1))], 4800, 2400, -60.0, GAIN_ONLY)
    fixed = sampler.fixed_windows()

    epoch = all_epoch_windows(sampler, seed=0)

    matched = fixed[match_rows(epoch, fixed)]
    gain_db = 20 * torch.log10((epoch * matched).sum(dim=1) / (matched * matched).sum(dim=1))
    assert gain_db.abs().max() <= 6.0 + 1e-4
    assert gain_db.min() < -4.0 and gain_db.max() > 4.0
    assert abs(gain_db.mean().item()) < 1.5  # 99 draws, uniform: mean 0, sd 0.35 dB


def test_jitter_moves_windows_within_half_a_hop_of_the_grid_and_stays_inside_the_clip():
    length, window, hop = RATE, 4800, 2400
    ramp = (np.arange(length) / length).astype(np.float32)  # each sample tells its own position
    sampler = WindowSampler([clip("ramp", ramp)], window, hop, -60.0, Augmentation(gain_db=0.0, p_varispeed=0.0))
    grid = torch.tensor(window_starts(ramp, window, hop))

    epoch = all_epoch_windows(sampler, seed=0)

    starts = torch.round(epoch[:, 0].double() * length).long()
    assert torch.equal(epoch, torch.stack([torch.from_numpy(ramp[s : s + window]) for s in starts.tolist()]))
    assert starts.min() >= 0 and starts.max() <= length - window
    assert (starts[:, None] - grid[None, :]).abs().min(dim=1).values.max() <= hop // 2
    assert (starts % hop != 0).sum() > len(sampler) // 2  # most moved off the grid


@pytest.mark.parametrize(
    "semitones, expected_hz", [(2, 1000 * 2 ** (2 / 12)), (-2, 1000 * 2 ** (-2 / 12)), (7, 1000 * 2 ** (7 / 12))]
)
def test_varispeed_shifts_a_1khz_tone_by_the_drawn_semitones(semitones, expected_hz):
    augmentation = Augmentation(jitter=False, gain_db=0.0, semitone_steps=(semitones,), p_varispeed=1.0)
    sampler = WindowSampler([clip("tone", sine(1000.0, 4.0))], RATE, RATE // 2, -60.0, augmentation)

    epoch = all_epoch_windows(sampler, seed=0, batch_size=4)

    assert epoch.shape == (len(sampler), RATE)
    for window in epoch:
        # speed ratios are small fractions within 2 cents of the semitone ratio
        assert abs(1200 * np.log2(peak_frequency_hz(window) / expected_hz)) < 2.1
        # level kept, and no fade or click at the edges: the resampler saw real context there
        rms = lambda x: x.pow(2).mean().sqrt().item()  # noqa: E731
        assert rms(window) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
        assert rms(window[:200]) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
        assert rms(window[-200:]) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_varispeed_segments_are_centred_on_their_window():
    length, window, hop = 4 * RATE, 9600, 4800
    ramp = (np.arange(length) / length).astype(np.float32)
    augmentation = Augmentation(jitter=False, gain_db=0.0, semitone_steps=(3,), p_varispeed=1.0)
    sampler = WindowSampler([clip("ramp", ramp)], window, hop, -60.0, augmentation)
    fixed_centres = sorted(s + window // 2 for s in window_starts(ramp, window, hop).tolist())

    epoch = all_epoch_windows(sampler, seed=0)

    p, q = speed_ratio(3)
    centres = sorted(round(x) for x in (epoch[:, window // 2].double() * length).tolist())
    inner = [(c, f) for c, f in zip(centres, fixed_centres, strict=True) if window < f < length - window]
    assert inner and all(abs(c - f) <= 2 for c, f in inner)
    slopes = (epoch[:, window // 2 + 100] - epoch[:, window // 2 - 100]).double() * length / 200
    assert torch.allclose(slopes, torch.full_like(slopes, p / q), rtol=2e-3)  # the sinc's passband ripple


def test_speed_ratios_are_small_fractions_within_two_cents():
    for semitones in range(-12, 13):
        p, q = speed_ratio(semitones)
        assert max(p, q) <= 64
        assert abs(1200 * np.log2(p / q) - 100 * semitones) <= 2.0


def test_full_augmentation_never_emits_non_finite_values_and_does_not_clip():
    loud = np.clip(noise(3.0, rms=0.5, seed=3), -1.0, 1.0)
    augmentation = Augmentation(gain_db=12.0, semitone_steps=(-12, -5, 0, 5, 12), p_varispeed=1.0)
    sampler = WindowSampler([clip("loud", loud), clip("short", loud[:3000])], 4800, 2400, -60.0, augmentation)

    epoch = all_epoch_windows(sampler, seed=0)

    assert torch.isfinite(epoch).all()
    assert epoch.abs().max() > 1.0  # +12 dB on a full-scale clip is passed on, not clamped


def test_a_sampler_over_silence_or_nothing_is_empty():
    silent = WindowSampler([clip("quiet", np.zeros(RATE, dtype=np.float32))], 4800, 2400, -60.0, Augmentation())
    nothing = WindowSampler([], 4800, 2400, -60.0, Augmentation())
    for sampler in (silent, nothing):
        assert len(sampler) == 0
        assert sampler.fixed_windows().shape == (0, 4800)
        assert list(sampler.epoch(torch.Generator().manual_seed(0), 8)) == []


def test_augmentation_settings_are_validated_and_none_disables_everything():
    none = Augmentation.none()
    assert not (none.uses_jitter or none.uses_gain or none.uses_varispeed)
    assert Augmentation(semitone_steps=[-1, 1]).semitone_steps == (-1, 1)
    for bad in (
        {"gain_db": -1.0},
        {"p_varispeed": 1.5},
        {"semitone_steps": (13,)},
        {"semitone_steps": ()},
        {"semitone_steps": (0.5,)},
    ):
        with pytest.raises(ConfigError, match=f"augmentation.{next(iter(bad))}="):
            Augmentation(**bad)


def test_making_windows_in_chunks_of_batches_changes_nothing_but_memory(monkeypatch):
    import sda.data.windows as windows_module

    sampler = WindowSampler(
        [clip("a", noise(3.0, seed=1)), clip("b", noise(1.0, seed=2))], 4800, 2400, -60.0, Augmentation()
    )
    one_chunk = list(sampler.epoch(torch.Generator().manual_seed(0), 16))
    monkeypatch.setattr(windows_module, "CHUNK_SAMPLES", 2 * 16 * 4800)  # two batches per chunk

    chunked = list(sampler.epoch(torch.Generator().manual_seed(0), 16))

    assert [b.shape[0] for b in chunked] == [b.shape[0] for b in one_chunk] == [16] * 4 + [14]
    torch.testing.assert_close(torch.cat(chunked), torch.cat(one_chunk), rtol=0, atol=1e-6)


def test_a_short_hit_keeps_its_attack_at_the_window_start_under_every_augmentation():
    hits = [clip(f"hit_{i}.wav", decaying_hit(0.05 + 0.1 * i, 0.5, 0.01 + 0.01 * i)) for i in range(4)]
    sampler = WindowSampler(hits, RATE, RATE // 2, -60.0, Augmentation(p_varispeed=1.0, semitone_steps=(-2, 2)))
    assert sampler.windows_per_clip == [1, 1, 1, 1]

    epoch = all_epoch_windows(sampler, seed=5, batch_size=4)

    assert epoch.shape == (4, RATE)
    onsets_ms = [
        1000 * int(np.flatnonzero(np.abs(w) > 0.1 * np.abs(w).max())[0]) / RATE for w in epoch.double().numpy()
    ]
    assert max(onsets_ms) < 2.0, onsets_ms  # within the resampling kernel's reach of sample 0
