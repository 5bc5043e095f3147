"""The demo corpus: six families of synthesized sounds, bit-identical for a seed.

Files are `{family}_{index:02d}.wav`, 24-bit PCM, 2 to 6 s each, faded in and out over 5 ms,
peak-normalized to a level drawn in [-12, -1] dBFS. Clip 1 of each family is stereo (a panned,
slightly delayed pair) so that loading exercises downmixing; the rest are mono. `corpus.json`
beside them records the version, seed and every file's sha256.

Every clip draws from its own generator, PCG64 seeded with (seed, family, index), so one clip
never depends on how many others are made. All synthesis is vectorized numpy; the only Python
loop over time is Karplus-Strong's, and that steps one string period at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from sda.errors import DatasetError, OutputError
from sda.files import file_sha256, write_atomic

log = logging.getLogger(__name__)

DEMO_CORPUS_VERSION = 1
MANIFEST_NAME = "corpus.json"
FAMILIES = ("struck", "plucked", "noise_sweep", "drone", "fm", "grains")
DEFAULT_CLIPS_PER_FAMILY = 8
DEFAULT_SAMPLE_RATE = 48000
STEREO_CLIP_INDEX = 1
DURATION_RANGE_S = (2.0, 6.0)
PEAK_RANGE_DBFS = (-12.0, -1.0)
FADE_S = 0.005


def clip_name(family: str, index: int) -> str:
    return f"{family}_{index:02d}.wav"


def synthesize_demo_corpus(
    folder: Path,
    seed: int = 0,
    clips_per_family: int = DEFAULT_CLIPS_PER_FAMILY,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> list[Path]:
    """Write the corpus into `folder` (created if needed) and return the clip paths, family by
    family. Each file is written atomically and only when its bytes differ from what is there;
    the manifest goes last, so an interrupted run leaves no manifest claiming a complete corpus."""
    _check_whole("seed", seed, 0)
    _check_whole("clips_per_family", clips_per_family, 1)
    _check_whole("sample_rate", sample_rate, 16000)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old_manifest = _read_manifest(folder)
    (folder / MANIFEST_NAME).unlink(missing_ok=True)

    paths: list[Path] = []
    digests: dict[str, str] = {}
    for family in FAMILIES:
        for index in range(clips_per_family):
            audio = synthesize_clip(family, index, seed, sample_rate)
            data = _wav_bytes(audio, sample_rate)
            path = folder / clip_name(family, index)
            digest = hashlib.sha256(data).hexdigest()
            if not (path.is_file() and file_sha256(path) == digest):
                write_atomic(path, data, replace=True)
            paths.append(path)
            digests[path.name] = digest

    # Clips an earlier manifest listed that this corpus no longer has would otherwise be trained on.
    if old_manifest is not None:
        for name in old_manifest.get("files", {}):
            if name not in digests and name == Path(name).name:
                (folder / name).unlink(missing_ok=True)

    manifest = {
        "version": DEMO_CORPUS_VERSION,
        "seed": seed,
        "sample_rate": sample_rate,
        "clips_per_family": clips_per_family,
        "families": list(FAMILIES),
        "files": digests,
    }
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    write_atomic(folder / MANIFEST_NAME, manifest_bytes, replace=True)
    return paths


def ensure_demo_corpus(folder: Path, seed: int = 0) -> list[Path]:
    """The default corpus's clip paths in `folder`, synthesizing it only when `corpus.json` is
    missing or disagrees with the seed, the version or any file's sha256. Raises DatasetError
    when the folder cannot be written."""
    folder = Path(folder)
    expected = [clip_name(f, i) for f in FAMILIES for i in range(DEFAULT_CLIPS_PER_FAMILY)]
    problem = _manifest_problem(folder, seed, expected)
    if problem is None:
        return [folder / name for name in expected]
    log.info("writing the demo corpus into %s (%s)", folder, problem)
    try:
        return synthesize_demo_corpus(folder, seed)
    except (OSError, OutputError) as error:
        reason = " ".join(str(error).split())
        raise DatasetError(f"dataset.path={str(folder)!r}: cannot write the demo corpus there ({reason})") from error


def _manifest_problem(folder: Path, seed: int, expected: list[str]) -> str | None:
    """Why the corpus in `folder` is not the default one for `seed`, or None when it is."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return f"no readable {MANIFEST_NAME}"
    wanted = {
        "version": DEMO_CORPUS_VERSION,
        "seed": seed,
        "sample_rate": DEFAULT_SAMPLE_RATE,
        "clips_per_family": DEFAULT_CLIPS_PER_FAMILY,
    }
    for key, value in wanted.items():
        if manifest.get(key) != value:
            return f"{key} is {manifest.get(key)!r}, not {value!r}"
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(expected):
        return "the manifest lists other files"
    for name in expected:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != files[name]:
            return f"{name} has changed"
    return None


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="WAV", subtype="PCM_24")
    return buffer.getvalue()


def _check_whole(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be a whole number >= {minimum}")


# ---------------------------------------------------------------------------------------------
# Synthesis. Each family function takes (generator, samples, sample_rate) and returns float64
# mono `[samples]` at any level; synthesize_clip fades, pans and normalizes.


def synthesize_clip(family: str, index: int, seed: int = 0, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """One corpus clip: float64 `[samples]` (mono) or `[samples, 2]` (stereo clip), peak in
    [-12, -1] dBFS."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}: must be one of {FAMILIES}")
    rng = np.random.Generator(np.random.PCG64([seed, FAMILIES.index(family), index]))
    samples = round(rng.uniform(*DURATION_RANGE_S) * sample_rate)
    peak_dbfs = rng.uniform(*PEAK_RANGE_DBFS)
    audio = _SYNTHS[family](rng, samples, sample_rate)
    fades = _fades(samples, round(FADE_S * sample_rate))
    if index == STEREO_CLIP_INDEX:
        # fade after the delay, or the delayed channel would end unfaded
        audio, fades = _pan_and_delay(rng, audio, sample_rate), fades[:, None]
    audio = audio * fades
    peak = np.max(np.abs(audio))
    return audio * (10.0 ** (peak_dbfs / 20.0) / peak)


def _fades(samples: int, fade_samples: int) -> np.ndarray:
    gain = np.ones(samples)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade_samples) + 0.5) / fade_samples)
    gain[:fade_samples] = ramp
    gain[samples - fade_samples :] = ramp[::-1]
    return gain


def _pan_and_delay(rng: np.random.Generator, mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """A constant-power pan off centre plus a 0.2-0.8 ms inter-channel delay: `[samples, 2]`."""
    angle = rng.uniform(0.15, 0.35) * np.pi
    delay = round(rng.uniform(0.0002, 0.0008) * sample_rate)
    late = np.concatenate([np.zeros(delay), mono[:-delay]])
    left, right = (mono, late) if rng.random() < 0.5 else (late, mono)
    return np.stack([np.cos(angle) * left, np.sin(angle) * right], axis=1)


def _log_uniform(rng: np.random.Generator, low: float, high: float, size: int | None = None) -> Any:
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


BELL_RATIOS = np.array([0.5, 1.0, 1.183, 1.506, 2.0, 2.514, 2.662, 3.011, 4.166, 5.433])
BAR_RATIOS = np.array([1.0, 2.756, 5.404, 8.933, 13.344])  # free-free beam modes


def _struck(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """Modal synthesis: inharmonic partials, each with its own exponential decay (higher modes
    die sooner), struck 1-3 times; each strike adds a short noise burst."""
    kind = rng.integers(3)
    if kind == 0:
        ratios, f0 = BELL_RATIOS, _log_uniform(rng, 200.0, 900.0)
    elif kind == 1:
        ratios, f0 = BAR_RATIOS, _log_uniform(rng, 250.0, 1200.0)
    else:  # a plate-like set: partials at stretched, irregular ratios
        ratios, f0 = np.sort(np.concatenate([[1.0], rng.uniform(1.3, 7.0, 7)])), _log_uniform(rng, 150.0, 700.0)
    freqs = f0 * ratios * (1.0 + rng.normal(0.0, 0.004, ratios.size))
    keep = freqs < 0.45 * sample_rate
    freqs = freqs[keep]
    tilt = rng.uniform(0.3, 1.3)  # brightness: how fast amplitudes fall with frequency
    amplitudes = rng.uniform(0.3, 1.0, freqs.size) * (freqs / freqs[0]) ** -tilt
    t60_s = rng.uniform(0.8, 4.0) * (freqs / freqs[0]) ** -rng.uniform(0.4, 1.1)
    t = np.arange(samples) / sample_rate
    phases = rng.uniform(0, 2 * np.pi, freqs.size)
    response = (
        amplitudes[:, None]
        * np.exp(-6.9078 * t / t60_s[:, None])
        * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])
    ).sum(axis=0)

    burst_samples = round(rng.uniform(0.002, 0.015) * sample_rate)
    smoothing = int(rng.integers(1, 8))  # a box filter: longer is a softer mallet
    burst = rng.normal(0.0, 1.0, burst_samples + smoothing) * rng.uniform(0.05, 0.3) * amplitudes.sum()
    burst = (np.cumsum(burst)[smoothing:] - np.cumsum(burst)[:-smoothing]) / smoothing
    burst *= np.exp(-np.arange(burst_samples) / (burst_samples / 4.0))
    strike = response.copy()
    strike[:burst_samples] += burst

    out = np.zeros(samples)
    times = [round(rng.uniform(0.0, 0.03) * sample_rate)]
    times += sorted(round(x) for x in rng.uniform(0.2, 0.8, int(rng.integers(0, 3))) * samples)
    for time in times:
        out[time:] += rng.uniform(0.4, 1.0) * strike[: samples - time]
    return out


def _plucked(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """Karplus-Strong strings, 1-4 plucks: a noise burst shaped by the pick position circulates in
    a one-period delay line with a two-tap averaging loss filter. Vectorized over one period:
    each new period depends only on the previous one (and its last sample)."""
    root_hz = _log_uniform(rng, 80.0, 330.0)
    intervals = np.array([1.0, 9 / 8, 5 / 4, 4 / 3, 3 / 2, 5 / 3, 2.0])
    t60_s = rng.uniform(1.0, 6.0)
    brightness = rng.uniform(0.05, 0.5)  # the loss filter's second tap: more is darker
    out = np.zeros(samples)
    notes = int(rng.integers(1, 5))
    starts = [0] + sorted(round(x) for x in rng.uniform(0.1, 0.8, notes - 1) * samples)
    for start in starts:
        period = max(2, round(sample_rate / (root_hz * rng.choice(intervals))))
        gain = 10.0 ** (-3.0 * period / (sample_rate * t60_s))  # reaches -60 dB after t60_s
        excitation = rng.uniform(-1.0, 1.0, period)
        pick = max(1, round(rng.uniform(0.08, 0.45) * period))
        excitation = excitation - np.roll(excitation, pick)  # a comb notch at the pick position
        length = samples - start
        line = np.zeros(length + 1)  # line[k] holds y[k - 1]; line[0] is y[-1] = 0
        line[1 : min(period, length) + 1] = excitation[: min(period, length)]
        for first in range(period, length, period):
            last = min(first + period, length)
            line[first + 1 : last + 1] = gain * (
                (1.0 - brightness) * line[first - period + 1 : last - period + 1]
                + brightness * line[first - period : last - period]
            )
        out[start:] += rng.uniform(0.5, 1.0) * line[1:]
    return out


def _noise_sweep(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """White noise through a resonant band-pass whose centre sweeps between two frequencies while an
    LFO wobbles it, applied frame by frame in the STFT domain (Hann, 75 % overlap-add)."""
    n_fft, hop = 2048, 512
    frames = -(-samples // hop) + 3
    frame_s = np.arange(frames) * hop / sample_rate
    duration_s = samples / sample_rate
    start_hz, end_hz = _log_uniform(rng, 150.0, 8000.0, 2)
    lfo_hz, lfo_octaves = _log_uniform(rng, 0.1, 4.0), rng.uniform(0.0, 1.2)
    centre_hz = start_hz * (end_hz / start_hz) ** np.clip(frame_s / duration_s, 0.0, 1.0)
    centre_hz = centre_hz * 2.0 ** (lfo_octaves * np.sin(2 * np.pi * lfo_hz * frame_s + rng.uniform(0, 2 * np.pi)))
    centre_hz = np.clip(centre_hz, 60.0, 0.4 * sample_rate)
    q = rng.uniform(1.5, 12.0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    freqs[0] = 1.0  # no division by zero at DC; that bin is removed below anyway
    ratio = freqs[None, :] / centre_hz[:, None]
    response = 1.0 / np.sqrt(1.0 + q * q * (ratio - 1.0 / ratio) ** 2) + rng.uniform(0.0, 0.03)
    response[:, 0] = 0.0
    spectra = (rng.normal(size=response.shape) + 1j * rng.normal(size=response.shape)) * response
    grains = np.fft.irfft(spectra, n_fft) * np.hanning(n_fft + 1)[:-1]
    # Overlap-add with hop = n_fft / 4: quarter k of frame f lands in output block f + k.
    blocks = np.zeros((frames + 3, hop))
    quarters = grains.reshape(frames, 4, hop)
    for k in range(4):
        blocks[k : k + frames] += quarters[:, k]
    out = blocks.reshape(-1)[3 * hop : 3 * hop + samples]
    swell_hz = _log_uniform(rng, 0.05, 0.5)
    swell = 1.0 - rng.uniform(0.0, 0.7) * (
        0.5 + 0.5 * np.sin(2 * np.pi * swell_hz * np.arange(samples) / sample_rate + rng.uniform(0, 2 * np.pi))
    )
    return out * swell


def _drone(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """Stacks of detuned band-limited oscillators (2-3 per pitch, a few cents apart, so they beat
    slowly) on a low root, with slow LFOs on amplitude and on brightness (a crossfade between a
    bright and a dark wavetable)."""
    root_hz = _log_uniform(rng, 45.0, 160.0)
    intervals = np.concatenate(
        [[1.0], rng.choice([1.5, 2.0, 2.5, 3.0, 4 / 3, 5 / 4, 6 / 5], int(rng.integers(1, 4)), replace=False)]
    )
    tilt = rng.uniform(0.8, 1.6)
    table_size = 4096
    x = np.arange(table_size) / table_size
    t = np.arange(samples) / sample_rate
    bright_sum, dark_sum = np.zeros(samples), np.zeros(samples)
    for interval in intervals:
        pitch_hz = root_hz * interval
        harmonics = np.arange(1, int(min(48, 0.45 * sample_rate / (pitch_hz * 1.01))) + 1)
        bright = (np.sin(2 * np.pi * harmonics[:, None] * x) / harmonics[:, None] ** tilt).sum(axis=0)
        dark = (np.sin(2 * np.pi * harmonics[:4, None] * x) / harmonics[:4, None] ** 2.5).sum(axis=0)
        bright, dark = np.append(bright, bright[0]), np.append(dark, dark[0])  # wrap for interpolation
        for cents in rng.uniform(-12.0, 12.0, int(rng.integers(2, 4))):
            phase = (pitch_hz * 2.0 ** (cents / 1200.0) * t + rng.uniform()) % 1.0 * table_size
            index = phase.astype(np.int64)
            frac = phase - index
            weight = 1.0 / interval
            bright_sum += weight * (bright[index] + frac * (bright[index + 1] - bright[index]))
            dark_sum += weight * (dark[index] + frac * (dark[index + 1] - dark[index]))
    brightness = 0.5 + 0.5 * np.sin(2 * np.pi * _log_uniform(rng, 0.03, 0.3) * t + rng.uniform(0, 2 * np.pi))
    brightness = rng.uniform(0.0, 0.5) + rng.uniform(0.3, 0.5) * brightness
    amplitude = 1.0 - rng.uniform(0.1, 0.6) * (
        0.5 + 0.5 * np.sin(2 * np.pi * _log_uniform(rng, 0.05, 0.5) * t + rng.uniform(0, 2 * np.pi))
    )
    return amplitude * (brightness * bright_sum + (1.0 - brightness) * dark_sum)


FM_RATIOS = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 1.414, 2.76])


def _fm(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """Two-operator FM notes: the modulation index falls from a bright attack to a mellow tail,
    under a fast-attack exponential amplitude envelope; 1-4 notes, one carrier:modulator ratio
    per clip."""
    ratio = rng.choice(FM_RATIOS)
    decay_s = rng.uniform(0.3, 3.0)
    index_decay_s = rng.uniform(0.05, 0.6)
    out = np.zeros(samples)
    notes = int(rng.integers(1, 5))
    starts = [0] + sorted(round(x) for x in rng.uniform(0.1, 0.75, notes - 1) * samples)
    for start in starts:
        carrier_hz = _log_uniform(rng, 110.0, 880.0)
        modulator_hz = carrier_hz * ratio
        # keep Carson's bandwidth under the band limit so the tone does not alias
        peak_index = min(rng.uniform(2.0, 10.0), max(0.5, (0.45 * sample_rate - carrier_hz) / modulator_hz - 1.0))
        tail_index = rng.uniform(0.1, 1.0)
        t = np.arange(samples - start) / sample_rate
        index = tail_index + (peak_index - tail_index) * np.exp(-t / index_decay_s)
        envelope = (1.0 - np.exp(-t / rng.uniform(0.002, 0.03))) * np.exp(-t / decay_s)
        phase = 2 * np.pi * carrier_hz * t + index * np.sin(2 * np.pi * modulator_hz * t + rng.uniform(0, 2 * np.pi))
        out[start:] += rng.uniform(0.5, 1.0) * envelope * np.sin(phase)
    return out


def _grains(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """Rain-like granular texture: many short grains at random times (a Poisson process whose rate
    swells slowly), each a windowed sine chirp (a drop) or a windowed noise tick, with pitches
    scattered around a centre, over a faint noise bed; density, grain length and pitch spread
    vary per clip."""
    density_hz = _log_uniform(rng, 20.0, 300.0)
    grain_samples = round(rng.uniform(0.005, 0.05) * sample_rate)
    centre_hz, spread_octaves = _log_uniform(rng, 400.0, 4000.0), rng.uniform(0.1, 1.5)
    chirp = rng.uniform(0.0, 1.0)  # relative pitch rise over a grain, as in falling drops
    noise_share = rng.uniform(0.0, 0.5)
    decay = rng.uniform(0.0, 1.0)  # 0: symmetric Hann grains, 1: sharp attack, exponential tail

    count = int(rng.poisson(density_hz * samples / sample_rate))
    times = rng.uniform(0.0, samples - grain_samples, count)
    # thin the process with a slow swell so the density moves over the clip
    swell = 0.6 + 0.4 * np.sin(
        2 * np.pi * _log_uniform(rng, 0.05, 0.4) * times / sample_rate + rng.uniform(0, 2 * np.pi)
    )
    times = times[rng.uniform(size=count) < swell].astype(np.int64)
    count = times.size
    pitches = np.clip(
        centre_hz * 2.0 ** (spread_octaves * rng.normal(size=count)), 60.0, 0.4 * sample_rate / (1.0 + chirp)
    )
    amplitudes = np.exp(rng.normal(0.0, 0.5, count))
    noisy = rng.uniform(size=count) < noise_share

    u = np.arange(grain_samples) / grain_samples
    window = (1.0 - decay) * np.sin(np.pi * u) ** 2 + decay * (1.0 - np.exp(-u * 60.0)) * np.exp(-u * 6.0)
    t = np.arange(grain_samples) / sample_rate
    grains = np.sin(
        2 * np.pi * pitches[:, None] * (t + 0.5 * chirp * t * t / t[-1]) + rng.uniform(0, 2 * np.pi, (count, 1))
    )
    grains[noisy] = rng.normal(0.0, 0.7, (int(noisy.sum()), grain_samples))
    grains *= window * amplitudes[:, None]
    positions = times[:, None] + np.arange(grain_samples)
    out = np.bincount(positions.ravel(), weights=grains.ravel(), minlength=samples)[:samples]
    # a faint, dull noise bed under the grains, as rain has: no stretch of digital silence
    smoothing = int(rng.integers(2, 16))
    bed = np.cumsum(rng.normal(0.0, 1.0, samples + smoothing))
    bed = (bed[smoothing:] - bed[:-smoothing]) / math.sqrt(smoothing)
    return out + rng.uniform(0.01, 0.06) * bed


_SYNTHS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "struck": _struck,
    "plucked": _plucked,
    "noise_sweep": _noise_sweep,
    "drone": _drone,
    "fm": _fm,
    "grains": _grains,
}
