"""Schemas of `python -m sda.run`: what decides an output's audio, and how to compute it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import torch

from sda.config.base import MAX_SEED, Sealed, check_device, check_range, check_seed, resolve_device
from sda.errors import ConfigError

MAX_DURATION_S = 600.0
SAMPLE_RATES = (44100, 48000, 96000)
INTERNAL_SAMPLE_RATE = 48000
BIT_DEPTHS = {"wav": (16, 24, 32), "flac": (16, 24), "ogg": (16,)}


class ChunkingMode(str, Enum):
    crossfade = "crossfade"
    latent_interp = "latent_interp"


class StereoMode(str, Enum):
    mono = "mono"
    mid_side = "mid_side"
    dual_seed = "dual_seed"


class AudioFormat(str, Enum):
    wav = "wav"
    flac = "flac"
    ogg = "ogg"


class InverseMel(str, Enum):
    """How a mel magnitude becomes a linear magnitude before phase reconstruction."""

    pinv = "pinv"  # one matrix product with the filterbank's pseudo-inverse
    lstsq = "lstsq"  # a least-squares solve per call (what torchaudio's InverseMelScale does)


class PhaseInit(str, Enum):
    """Griffin-Lim's starting phase."""

    random = "random"
    zeros = "zeros"
    pghi = "pghi"  # per-bin phase-gradient integration along time (see sda.dsp.phase)
    locked = "locked"  # peak-locked integration along time (see sda.dsp.phase)


@dataclass(unsafe_hash=True)
class ModelConfig(Sealed):
    """Which checkpoint: a bare name (looked up in ./models, then the models shipped with sda) or a path."""

    KEY: ClassVar[str] = "model"
    checkpoint: str = "default"

    def validate(self) -> None:
        if not self.checkpoint.strip():
            raise ConfigError(f"{self.KEY}.checkpoint", self.checkpoint, "give a model name or a checkpoint path")


@dataclass(unsafe_hash=True)
class ChunkingConfig(Sealed):
    """How a duration longer than one model window is built.

    crossfade: an independent latent per `chunk_s` chunk, decoded and phase-reconstructed per
    chunk, joined by equal-power crossfades of `overlap_ms`.
    latent_interp: anchor latents every `anchor_interval_s`, SLERP between them for each mel
    window (windows `window_hop_fraction` of a window apart), windowed overlap-add of the
    decoded mels, then one phase reconstruction over the whole spectrogram."""

    KEY: ClassVar[str] = "chunking"
    mode: ChunkingMode = ChunkingMode.crossfade
    chunk_s: float = 1.0
    overlap_ms: float = 100.0
    anchor_interval_s: float = 2.0
    window_hop_fraction: float = 0.5

    def validate(self) -> None:
        check_range(f"{self.KEY}.chunk_s", self.chunk_s, 0.0, 60.0, low_open=True)
        check_range(f"{self.KEY}.overlap_ms", self.overlap_ms, 0.0, 2000.0)
        if self.overlap_ms / 1000.0 > self.chunk_s / 2:
            raise ConfigError(
                f"{self.KEY}.overlap_ms",
                self.overlap_ms,
                f"at most half of chunking.chunk_s ({self.chunk_s * 500:g} ms)",
            )
        check_range(f"{self.KEY}.anchor_interval_s", self.anchor_interval_s, 0.05, 600.0)
        if self.window_hop_fraction != 0.5:
            raise ConfigError(
                f"{self.KEY}.window_hop_fraction",
                self.window_hop_fraction,
                "only 0.5 (a periodic Hann window is constant-overlap-add at half-window hops)",
            )


@dataclass(unsafe_hash=True)
class StereoConfig(Sealed):
    """mono: one channel. mid_side: a Haas delay of `haas_ms` on the right channel, then the side
    signal scaled by `width`. dual_seed: the right channel generated from a second seed derived
    from the left one (see sda.seeds)."""

    KEY: ClassVar[str] = "stereo"
    mode: StereoMode = StereoMode.mono
    width: float = 1.0
    haas_ms: float = 12.0

    def validate(self) -> None:
        check_range(f"{self.KEY}.width", self.width, 0.0, 1.5)
        check_range(f"{self.KEY}.haas_ms", self.haas_ms, 0.0, 40.0)

    @property
    def channels(self) -> int:
        return 1 if self.mode == StereoMode.mono else 2


@dataclass(unsafe_hash=True)
class ExportConfig(Sealed):
    """File format. The pipeline works at 48 kHz and resamples once, at the end."""

    KEY: ClassVar[str] = "export"
    format: AudioFormat = AudioFormat.wav
    sample_rate: int = 48000
    bit_depth: int = 24
    ogg_quality: float = 0.7

    def validate(self) -> None:
        if self.sample_rate not in SAMPLE_RATES:
            raise ConfigError(
                f"{self.KEY}.sample_rate", self.sample_rate, f"one of {', '.join(map(str, SAMPLE_RATES))}"
            )
        depths = BIT_DEPTHS[self.format.value]
        if self.bit_depth not in depths:
            raise ConfigError(
                f"{self.KEY}.bit_depth",
                self.bit_depth,
                f"{self.format.value} allows {', '.join(map(str, depths))}"
                + (" (16 = PCM, 24 = PCM, 32 = float)" if self.format == AudioFormat.wav else ""),
            )
        check_range(f"{self.KEY}.ogg_quality", self.ogg_quality, 0.0, 1.0)

    @property
    def extension(self) -> str:
        return f".{self.format.value}"


@dataclass(unsafe_hash=True)
class PhaseConfig(Sealed):
    """Phase reconstruction (Griffin-Lim). Defaults chosen by `python -m sda.phase_table`."""

    KEY: ClassVar[str] = "phase"
    inverse_mel: InverseMel = InverseMel.pinv
    iterations: int = 8
    momentum: float = 0.99
    init: PhaseInit = PhaseInit.locked

    def validate(self) -> None:
        check_range(f"{self.KEY}.iterations", self.iterations, 0, 1000)
        check_range(f"{self.KEY}.momentum", self.momentum, 0.0, 1.0)
        if self.momentum >= 1.0:
            raise ConfigError(f"{self.KEY}.momentum", self.momentum, "allowed range is [0, 1) (1 diverges)")


@dataclass(unsafe_hash=True)
class GenerationConfig(Sealed):
    """Everything that decides the audio an output gets, plus how to compute it.

    `count` outputs are made, with seeds seed .. seed+count-1."""

    seed: int = 0
    count: int = 1
    duration_s: float = 10.0
    device: str = "auto"
    batch_size: int = 0  # 0: chosen from the device
    model: ModelConfig = field(default_factory=ModelConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    stereo: StereoConfig = field(default_factory=StereoConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    phase: PhaseConfig = field(default_factory=PhaseConfig)

    def validate(self) -> None:
        check_seed("seed", self.seed)
        if self.count < 1:
            raise ConfigError("count", self.count, "an integer >= 1")
        if self.seed + self.count - 1 > MAX_SEED:
            raise ConfigError("count", self.count, f"seed + count - 1 must stay <= {MAX_SEED}; seed is {self.seed}")
        check_range("duration_s", self.duration_s, 0.0, MAX_DURATION_S, low_open=True)
        check_device("device", self.device)
        if self.batch_size < 0:
            raise ConfigError("batch_size", self.batch_size, "0 (automatic) or a positive integer")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.count))

    def resolved_device(self) -> torch.device:
        """The device on this machine (raises a one-line ConfigError for cuda without one)."""
        return resolve_device(self.device)

    def generation_fields(self) -> dict[str, Any]:
        """The resolved config as a plain dict, without the Hydra-only run fields."""
        names = {f.name for f in dataclasses.fields(GenerationConfig)}
        return {k: v for k, v in self.to_dict().items() if k in names}


@dataclass(unsafe_hash=True)
class RunConfig(GenerationConfig):
    """The primary config of `python -m sda.run`: a GenerationConfig plus how to run it.

    `reproduce`: the sidecar (.json) of an output to make again; `python -m sda.run` turns it into
    overrides before composing (see sda.run), and the job compares what it made with it."""

    reproduce: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.reproduce is not None and not Path(self.reproduce).expanduser().is_file():
            raise ConfigError("reproduce", self.reproduce, "the path of an output's sidecar .json (file not found)")


def with_seed(config: GenerationConfig, value: str) -> GenerationConfig:
    """`config` with its seed replaced by a command-line value, validated again. Pre-flight of a
    sweep over thousands of seeds uses this instead of composing every point."""
    try:
        seed = int(value)
    except ValueError:
        raise ConfigError("seed", value, f"an integer in [0, {MAX_SEED}]") from None
    return dataclasses.replace(config, seed=seed)
