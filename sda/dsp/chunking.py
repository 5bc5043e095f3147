"""Joining pieces into long outputs: latent paths between anchors (slerp), equal-power crossfades
of audio chunks, and normalized overlap-add of spectrogram windows; and the layouts of the three
chunking modes (crossfade, latent_interp, oneshot).

Shapes are stated per function; everything is batched over the leading dims with tensor ops.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

# Above this |cos| the angle between two vectors is too small (or too close to pi) for the
# slerp weights sin(t*theta)/sin(theta) to be accurate; linear interpolation is used instead.
PARALLEL_COS = 0.9995


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation of `[..., D]` vectors at `t` (broadcastable to `[...]`).

    The direction moves along the great circle and the norm moves linearly from |a| to |b|, so
    Gaussian latents keep a typical magnitude midway instead of shrinking as with a straight line.
    Nearly parallel or antiparallel pairs (|cos| > PARALLEL_COS) and zero vectors fall back to
    linear interpolation (antiparallel pairs then pass near the origin). t=0 gives a and t=1
    gives b exactly; t outside [0, 1] extrapolates.
    """
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device).unsqueeze(-1)
    norm_a = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    norm_b = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    tiny = torch.finfo(a.dtype).tiny
    nonzero = (norm_a > tiny) & (norm_b > tiny)
    unit_a = a / torch.where(nonzero, norm_a, torch.ones_like(norm_a))
    unit_b = b / torch.where(nonzero, norm_b, torch.ones_like(norm_b))
    cos = (unit_a * unit_b).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    use_lerp = ~nonzero | (cos.abs() > PARALLEL_COS)
    theta = torch.acos(cos)
    sin_theta = torch.where(use_lerp, torch.ones_like(theta), torch.sin(theta))
    direction = (torch.sin((1.0 - t) * theta) * unit_a + torch.sin(t * theta) * unit_b) / sin_theta
    spherical = direction * ((1.0 - t) * norm_a + t * norm_b)
    linear = (1.0 - t) * a + t * b
    result = torch.where(use_lerp, linear, spherical)
    result = torch.where(t == 0, a, result)
    return torch.where(t == 1, b, result)


def interpolate_anchors(anchors: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Latents `[B, n, D]` at `positions` `[n]` along a path through `anchors` `[B, n_anchors, D]`.

    Positions are in anchor units (0 = first anchor, 1 = second, fractions slerp between the two
    around them), clamped to [0, n_anchors - 1]. Integer positions return the anchors exactly.
    """
    if anchors.dim() != 3 or anchors.shape[1] == 0:
        raise ValueError(f"anchors has shape {tuple(anchors.shape)}: expected [batch, n_anchors >= 1, dim]")
    if positions.dim() != 1:
        raise ValueError(f"positions has shape {tuple(positions.shape)}: expected [n]")
    last = anchors.shape[1] - 1
    positions = positions.to(device=anchors.device, dtype=anchors.dtype).clamp(0.0, float(last))
    # The final anchor is reached as t=1 of the last segment, so the lower index stops at last-1.
    lower = positions.floor().long().clamp(max=max(last - 1, 0))
    upper = (lower + 1).clamp(max=last)
    t = positions - lower.to(positions.dtype)
    return slerp(anchors[:, lower], anchors[:, upper], t)


@functools.lru_cache(maxsize=16)
def crossfade_curves(overlap_samples: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(fade_in, fade_out) `[overlap_samples]`: sin and cos of pi/2*u, u at sample centres, so the
    two are mirror images and fade_in**2 + fade_out**2 == 1 on every sample."""
    u = (torch.arange(overlap_samples, dtype=torch.float64) + 0.5) / overlap_samples
    fade_in = torch.sin(math.pi / 2 * u).to(device=device, dtype=dtype)
    fade_out = torch.cos(math.pi / 2 * u).to(device=device, dtype=dtype)
    return fade_in, fade_out


def equal_power_crossfade(chunks: torch.Tensor, overlap_samples: int) -> torch.Tensor:
    """Join `[B, n_chunks, C, chunk_samples]` into `[B, C, total]` with equal-power crossfades.

    total = n_chunks*chunk_samples - (n_chunks-1)*overlap_samples. Equal power keeps the level of
    uncorrelated material (independent renders) across a join; for identical, correlated material
    the sum rises by up to 3 dB mid-fade. The first chunk's start and last chunk's end are not faded.
    """
    if chunks.dim() != 4:
        raise ValueError(f"chunks has shape {tuple(chunks.shape)}: expected [batch, n_chunks, channels, samples]")
    batch, n_chunks, channels, chunk_samples = chunks.shape
    if not 0 <= overlap_samples <= chunk_samples // 2:
        raise ValueError(f"overlap_samples={overlap_samples}: must be in [0, chunk_samples/2 = {chunk_samples // 2}]")
    if n_chunks == 0 or chunk_samples == 0:
        raise ValueError(f"chunks has shape {tuple(chunks.shape)}: needs at least one chunk of one sample")
    hop = chunk_samples - overlap_samples
    total = n_chunks * chunk_samples - (n_chunks - 1) * overlap_samples
    envelope = torch.ones(n_chunks, chunk_samples, dtype=chunks.dtype, device=chunks.device)
    if overlap_samples > 0:
        fade_in, fade_out = crossfade_curves(overlap_samples, str(chunks.device), chunks.dtype)
        envelope[1:, :overlap_samples] = fade_in
        envelope[:-1, chunk_samples - overlap_samples :] = fade_out
    weighted = chunks * envelope[None, :, None, :]
    # fold sums the hop-shifted chunks: columns are [channels * chunk_samples] per chunk.
    columns = weighted.permute(0, 2, 3, 1).reshape(batch, channels * chunk_samples, n_chunks)
    joined = torch.nn.functional.fold(columns, output_size=(1, total), kernel_size=(1, chunk_samples), stride=(1, hop))
    return joined.reshape(batch, channels, total)


@functools.lru_cache(maxsize=16)
def _cola_window(n_frames: int, hop_frames: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    def hann_at_centres(length: int) -> torch.Tensor:
        return torch.sin(math.pi * (torch.arange(length, dtype=torch.float64) + 0.5) / length) ** 2

    if hop_frames < n_frames and n_frames % hop_frames == 0:
        window = hann_at_centres(n_frames)
    else:
        # A box of length hop tiles the line when shifted by hop; smoothing it with any kernel
        # keeps that property, so box * Hann is COLA for every hop <= n.
        kernel = hann_at_centres(n_frames - hop_frames + 1)
        box = torch.ones(1, 1, hop_frames, dtype=torch.float64)
        window = torch.nn.functional.conv1d(box, kernel.flip(0)[None, None], padding=kernel.numel() - 1)[0, 0]
    return (window / window.max()).to(device=device, dtype=dtype)


def cola_window(
    n_frames: int, hop_frames: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Window `[n_frames]` whose copies shifted by `hop_frames` sum to a constant; peak 1.

    When hop divides n (and hop < n): Hann sampled at frame centres, sin^2(pi*(i+0.5)/n).
    Otherwise a box of length hop smoothed by such a Hann of length n-hop+1 (a flat top with
    raised-cosine-like shoulders). Unlike the usual periodic Hann, no value is zero, so every
    frame of an overlap-add keeps some weight. Cached: do not modify in place.
    """
    if not 1 <= hop_frames <= n_frames:
        raise ValueError(f"hop_frames={hop_frames}: must be in [1, n_frames = {n_frames}]")
    return _cola_window(n_frames, hop_frames, str(torch.device(device)), dtype)


def overlap_add_frames(windows: torch.Tensor, hop_frames: int, window: torch.Tensor) -> torch.Tensor:
    """Overlap-add `[B, n_windows, F, T]` spectrogram windows into `[B, F, total_frames]`.

    total_frames = (n_windows-1)*hop_frames + T. Each window is weighted by `window` `[T]` and the
    sum is divided by the summed shifted window, so every frame, edges included, gets unit gain:
    identical overlapping content comes back unchanged. Frames whose summed weight is zero come
    out as zero.
    """
    if windows.dim() != 4:
        raise ValueError(f"windows has shape {tuple(windows.shape)}: expected [batch, n_windows, freqs, frames]")
    batch, n_windows, n_freqs, frames = windows.shape
    if window.shape != (frames,):
        raise ValueError(f"window has shape {tuple(window.shape)}: expected [{frames}] to match the windows")
    if not 1 <= hop_frames <= frames:
        raise ValueError(f"hop_frames={hop_frames}: must be in [1, {frames}] (a larger hop leaves gaps)")
    if n_windows == 0:
        raise ValueError("windows holds no windows: need at least one")
    total = (n_windows - 1) * hop_frames + frames
    window = window.to(dtype=windows.dtype)
    fold = functools.partial(
        torch.nn.functional.fold, output_size=(1, total), kernel_size=(1, frames), stride=(1, hop_frames)
    )
    weighted = (windows * window).permute(0, 2, 3, 1).reshape(batch, n_freqs * frames, n_windows)
    summed = fold(weighted).reshape(batch, n_freqs, total)
    weight = fold(window[None, :, None].expand(1, frames, n_windows)).reshape(total)
    nonzero = weight.abs() > torch.finfo(weight.dtype).tiny
    safe_weight = torch.where(nonzero, weight, torch.ones_like(weight))
    return torch.where(nonzero, summed / safe_weight, torch.zeros_like(summed))


# ---------------------------------------------------------------------------------------------
# Layouts: how many chunks or windows a render of `samples` samples needs, and where they sit.
# The pipeline and the benchmark's reference path both build their renders from these.


@dataclass(frozen=True)
class CrossfadeLayout:
    """`n_chunks` chunks of `chunk` samples, `overlap` samples of crossfade, cut from each decoded
    window of `window` samples at `start` (the middle: a window's edges reconstruct worst)."""

    chunk: int
    overlap: int
    n_chunks: int
    window: int

    @property
    def hop(self) -> int:
        return self.chunk - self.overlap

    @property
    def start(self) -> int:
        return (self.window - self.chunk) // 2

    @property
    def total(self) -> int:
        """Samples after joining: n_chunks * chunk - (n_chunks - 1) * overlap."""
        return self.n_chunks * self.chunk - (self.n_chunks - 1) * self.overlap


def crossfade_layout(
    samples: int, sample_rate: int, window_samples: int, chunk_s: float, overlap_ms: float
) -> CrossfadeLayout:
    """The fewest chunks whose crossfaded join covers `samples`."""
    chunk = round(chunk_s * sample_rate)
    overlap = round(overlap_ms * sample_rate / 1000)
    if not 0 < chunk <= window_samples or not 0 <= overlap <= chunk // 2:
        raise ValueError(f"chunk {chunk} and overlap {overlap} samples do not fit a window of {window_samples}")
    n_chunks = max(1, math.ceil((samples - overlap) / (chunk - overlap)))
    return CrossfadeLayout(chunk=chunk, overlap=overlap, n_chunks=n_chunks, window=window_samples)


@dataclass(frozen=True)
class LatentInterpLayout:
    """`n_windows` decoded windows of `window_frames` frames, `hop_frames` apart, overlap-added into
    `total_frames` frames; window i's latent lies at `positions[i]` (in anchor units) on a path
    through `n_anchors` anchors. `length` is the audio the spectrogram reconstructs to."""

    window_frames: int
    hop_frames: int
    n_windows: int
    positions: torch.Tensor  # [n_windows] float64
    n_anchors: int
    hop_length: int

    @property
    def total_frames(self) -> int:
        return (self.n_windows - 1) * self.hop_frames + self.window_frames

    @property
    def length(self) -> int:
        return (self.total_frames - 1) * self.hop_length


def latent_interp_layout(
    samples: int, sample_rate: int, hop_length: int, window_frames: int, anchor_interval_s: float
) -> LatentInterpLayout:
    """Windows half a window apart (a Hann window at half-window hops is constant-overlap-add)
    until the spectrogram covers `samples`; each window's latent sits at its centre's time over
    `anchor_interval_s`, so anchors fall every `anchor_interval_s` seconds."""
    hop_frames = max(1, round(window_frames * 0.5))
    frames_needed = 1 + math.ceil(samples / hop_length)
    n_windows = max(1, math.ceil(max(0, frames_needed - window_frames) / hop_frames) + 1)
    centres_s = (
        (torch.arange(n_windows, dtype=torch.float64) * hop_frames + window_frames / 2) * hop_length / sample_rate
    )
    positions = centres_s / anchor_interval_s
    n_anchors = math.floor(positions[-1].item()) + 2
    return LatentInterpLayout(
        window_frames=window_frames,
        hop_frames=hop_frames,
        n_windows=n_windows,
        positions=positions,
        n_anchors=n_anchors,
        hop_length=hop_length,
    )


# A one-shot's window is reconstructed after this many frames of silence: at least the frames
# whose analysis window reaches before the window's start (n_fft / 2 / hop = 2 by default).
ONESHOT_PRE_ROLL_FRAMES = 2


@dataclass(frozen=True)
class OneshotLayout:
    """One decoded window of `window` samples, reconstructed (with its spectrogram) after
    `pre_roll_frames` frames of silence: `length` samples are rebuilt and the first `start`, the
    silence, cut off again; a hit keeps at most `longest` samples of the window.

    Why the silence: a peak-locked Griffin-Lim start gives the first frame one phase in every bin,
    an impulse at that frame's centre. On the window's own first frame that is a click on every
    attack (10 dB over the next 50 ms, measured on a model trained on drums); a hit follows
    silence, and on silence the impulse is nothing."""

    window: int
    hop_length: int
    pre_roll_frames: int
    longest: int

    @property
    def start(self) -> int:
        return self.pre_roll_frames * self.hop_length

    @property
    def length(self) -> int:
        return self.start + self.window


def oneshot_layout(
    samples: int, window_samples: int, hop_length: int, pre_roll_frames: int = ONESHOT_PRE_ROLL_FRAMES
) -> OneshotLayout:
    """One window whatever `samples` asks for: a hit is at most min(samples, window) long."""
    if samples < 1 or window_samples < 1:
        raise ValueError(f"samples={samples}, window_samples={window_samples}: both must be at least 1")
    return OneshotLayout(
        window=window_samples,
        hop_length=hop_length,
        pre_roll_frames=pre_roll_frames,
        longest=min(samples, window_samples),
    )
