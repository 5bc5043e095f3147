"""Sample-rate conversion with resamplers built once per (rate pair, device, dtype) and reused."""

from __future__ import annotations

import functools

import torch
import torchaudio

# Kaiser-windowed sinc with a long kernel: transparent for audio work, and the kernel is built
# once per rate pair, so its length costs only convolution time.
LOWPASS_FILTER_WIDTH = 64
ROLLOFF = 0.9475937167399596
BETA = 14.769656459379492


def get_resampler(
    orig_sample_rate: int, new_sample_rate: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> torchaudio.transforms.Resample:
    """The cached resampler for one rate pair on one device (built on first use)."""
    return _cached_resampler(int(orig_sample_rate), int(new_sample_rate), str(torch.device(device)), dtype)


@functools.lru_cache(maxsize=32)
def _cached_resampler(
    orig_sample_rate: int, new_sample_rate: int, device: str, dtype: torch.dtype
) -> torchaudio.transforms.Resample:
    resampler = torchaudio.transforms.Resample(
        orig_sample_rate,
        new_sample_rate,
        resampling_method="sinc_interp_kaiser",
        lowpass_filter_width=LOWPASS_FILTER_WIDTH,
        rolloff=ROLLOFF,
        beta=BETA,
        dtype=dtype,
    )
    return resampler.to(device)


def resample(audio: torch.Tensor, orig_sample_rate: int, new_sample_rate: int) -> torch.Tensor:
    """Resample `[..., samples]` audio. Returns the input itself when the rates are equal.

    The output holds ceil(samples * new / orig) samples.
    """
    if orig_sample_rate == new_sample_rate:
        return audio
    resampler = get_resampler(orig_sample_rate, new_sample_rate, str(audio.device), audio.dtype)
    return resampler(audio)
