"""Log-mel spectrogram settings and the forward transform.

A log-mel here is `log1p(mel magnitude)`: the mel filterbank applied to the STFT magnitude
(power 1), then log1p. Shapes: audio `[..., samples]` -> log-mel `[..., n_mels, frames]`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torchaudio

from sda.errors import CheckpointError, ConfigError
from sda.schema import Sealed, check_choice, check_range

N_FFTS = (512, 1024, 2048, 4096)


# A model window's length in seconds: the longest is also the longest one-shot any model renders.
MIN_WINDOW_S = 0.25
MAX_WINDOW_S = 4.0


@dataclass(unsafe_hash=True)
class SpectrogramSettings(Sealed):
    """Everything that decides what a log-mel frame means. Stored in every checkpoint and compared
    on load: two settings with the same tensor shapes can still describe different sounds.

    Also the `spectrogram` schema of `sda.train`: sealed (read-only, hashable) once validated."""

    KEY: ClassVar[str] = "spectrogram"
    sample_rate: int = 48000
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 24000.0
    mel_scale: str = "htk"
    mel_norm: str | None = None
    power: float = 1.0
    compression: str = "log1p"
    window: str = "hann"
    window_s: float = 1.0

    def validate(self) -> None:
        k = self.KEY
        check_range(f"{k}.sample_rate", self.sample_rate, 8000, 384000)
        check_choice(f"{k}.n_fft", self.n_fft, N_FFTS)
        check_range(f"{k}.hop_length", self.hop_length, 64, self.n_fft // 2)
        check_range(f"{k}.n_mels", self.n_mels, 16, 256)
        check_range(f"{k}.f_max", self.f_max, 0.0, 192000.0, low_open=True)
        if self.f_max > self.sample_rate / 2:
            # Either key may be the one to change; f_max's default suits 48 kHz, so name the rate.
            raise ConfigError(
                f"{k}.sample_rate", self.sample_rate, f"at least twice {k}.f_max={self.f_max:g} Hz (or lower f_max)"
            )
        if not 0.0 <= self.f_min < self.f_max:
            raise ConfigError(f"{k}.f_min", self.f_min, f"allowed range is [0, f_max={self.f_max:g})")
        check_choice(f"{k}.mel_scale", self.mel_scale, ("htk", "slaney"))
        check_choice(f"{k}.mel_norm", self.mel_norm, (None, "slaney"))
        check_choice(f"{k}.power", self.power, (1.0,))  # magnitude; nothing else is implemented
        check_choice(f"{k}.compression", self.compression, ("log1p",))
        check_choice(f"{k}.window", self.window, ("hann",))
        check_range(f"{k}.window_s", self.window_s, MIN_WINDOW_S, MAX_WINDOW_S)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def window_samples(self) -> int:
        """Samples in one model window."""
        return round(self.window_s * self.sample_rate)

    @property
    def window_frames(self) -> int:
        """Frames in one model window (centred STFT)."""
        return frames_for_samples(self.window_samples, self.hop_length)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpectrogramSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"spectrogram settings hold unknown keys {unknown}; allowed: {sorted(known)}")
        missing = sorted(known - set(data))
        if missing:
            raise CheckpointError(f"spectrogram settings lack keys {missing}")
        return cls(**data)

    def differences(self, other: SpectrogramSettings) -> list[str]:
        """Human-readable `key: mine != theirs` for every setting that differs."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def frames_for_samples(samples: int, hop_length: int) -> int:
    """Frames a centred STFT gives for `samples` samples."""
    return 1 + samples // hop_length


@functools.lru_cache(maxsize=16)
def mel_filterbank(settings: SpectrogramSettings, device: str = "cpu") -> torch.Tensor:
    """`[n_freqs, n_mels]` filterbank, built once per settings and device."""
    fb = torchaudio.functional.melscale_fbanks(
        n_freqs=settings.n_freqs,
        f_min=settings.f_min,
        f_max=settings.f_max,
        n_mels=settings.n_mels,
        sample_rate=settings.sample_rate,
        norm=settings.mel_norm,
        mel_scale=settings.mel_scale,
    )
    return fb.to(device)


@functools.lru_cache(maxsize=16)
def stft_window(n_fft: int, device: str = "cpu") -> torch.Tensor:
    """Periodic Hann window, built once per size and device."""
    return torch.hann_window(n_fft, device=device)


def stft(audio: torch.Tensor, settings: SpectrogramSettings) -> torch.Tensor:
    """Complex STFT `[..., n_freqs, frames]` of `[..., samples]` audio (centred, reflect padding)."""
    shape = audio.shape
    spec = torch.stft(
        audio.reshape(-1, shape[-1]),
        n_fft=settings.n_fft,
        hop_length=settings.hop_length,
        window=stft_window(settings.n_fft, str(audio.device)),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


def istft(spec: torch.Tensor, settings: SpectrogramSettings, length: int) -> torch.Tensor:
    """Inverse of `stft`: `[..., n_freqs, frames]` -> `[..., length]`."""
    shape = spec.shape
    audio = torch.istft(
        spec.reshape(-1, *shape[-2:]),
        n_fft=settings.n_fft,
        hop_length=settings.hop_length,
        window=stft_window(settings.n_fft, str(spec.device)),
        center=True,
        length=length,
    )
    return audio.reshape(*shape[:-2], length)


def mel_magnitude(audio: torch.Tensor, settings: SpectrogramSettings) -> torch.Tensor:
    """Mel magnitude `[..., n_mels, frames]` (before compression)."""
    magnitude = stft(audio, settings).abs()
    fb = mel_filterbank(settings, str(audio.device))
    return torch.matmul(magnitude.transpose(-1, -2), fb).transpose(-1, -2)


def compress(mel: torch.Tensor) -> torch.Tensor:
    """Mel magnitude -> log-mel."""
    return torch.log1p(mel)


def decompress(log_mel: torch.Tensor) -> torch.Tensor:
    """Log-mel -> mel magnitude (never negative)."""
    return torch.expm1(log_mel.clamp(min=0.0))


def log_mel(audio: torch.Tensor, settings: SpectrogramSettings) -> torch.Tensor:
    """Log-mel `[..., n_mels, frames]` of `[..., samples]` audio."""
    return compress(mel_magnitude(audio, settings))
