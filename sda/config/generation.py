"""Schemas of `python -m sda.run`: what decides an output's audio, and how to compute it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import MISSING

from sda.config.base import MAX_SEED, Sealed, check_device, check_range, check_seed, resolve_device
from sda.encode import FORMATS
from sda.errors import ConfigError

MAX_DURATION_S = 600.0
# 10 ms: at least 441 frames at every export rate (a shorter file is no sound, only a click).
MIN_DURATION_S = 0.01
SAMPLE_RATES = (44100, 48000, 96000)
INTERNAL_SAMPLE_RATE = 48000


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


class GroupOption(Sealed):
    """One option of a config group (a file in conf/<group>/). The option's name is a class
    constant, not a field: `chunking=latent_interp` chooses the class, and a key that belongs to
    another option (`chunking.chunk_s` with latent_interp) is refused while composing."""

    KEY: ClassVar[str]
    NAME_KEY: ClassVar[str] = "mode"  # how to_dict() names the option
    OPTION: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The option's name first, then its fields (what sidecars and identities hold)."""
        return {self.NAME_KEY: self.OPTION, **super().to_dict()}


@dataclass(unsafe_hash=True)
class ChunkingConfig(GroupOption):
    """How a duration longer than one model window is built (an option of `chunking`)."""

    KEY: ClassVar[str] = "chunking"

    @property
    def mode(self) -> str:
        return self.OPTION


@dataclass(unsafe_hash=True)
class CrossfadeChunking(ChunkingConfig):
    """An independent latent per `chunk_s` chunk, decoded and phase-reconstructed per chunk (the
    middle of a model window), joined by equal-power crossfades of `overlap_ms`."""

    OPTION: ClassVar[str] = "crossfade"
    chunk_s: float = 1.0
    overlap_ms: float = 100.0

    def validate(self) -> None:
        check_range(f"{self.KEY}.chunk_s", self.chunk_s, 0.0, 60.0, low_open=True)
        check_range(f"{self.KEY}.overlap_ms", self.overlap_ms, 0.0, 2000.0)
        if self.overlap_ms / 1000.0 > self.chunk_s / 2:
            raise ConfigError(
                f"{self.KEY}.overlap_ms",
                self.overlap_ms,
                f"at most half of chunking.chunk_s ({self.chunk_s * 500:g} ms)",
            )


@dataclass(unsafe_hash=True)
class LatentInterpChunking(ChunkingConfig):
    """Anchor latents every `anchor_interval_s`, SLERP between them for each mel window (windows
    half a window apart), windowed overlap-add of the decoded mels, then one phase reconstruction
    over the whole spectrogram: slow continuous evolution."""

    OPTION: ClassVar[str] = "latent_interp"
    anchor_interval_s: float = 2.0

    def validate(self) -> None:
        check_range(f"{self.KEY}.anchor_interval_s", self.anchor_interval_s, 0.05, 600.0)


@dataclass(unsafe_hash=True)
class StereoConfig(GroupOption):
    """How the channels are made (an option of `stereo`)."""

    KEY: ClassVar[str] = "stereo"
    CHANNELS: ClassVar[int] = 2

    @property
    def mode(self) -> str:
        return self.OPTION

    @property
    def channels(self) -> int:
        return self.CHANNELS


@dataclass(unsafe_hash=True)
class MonoStereo(StereoConfig):
    """One channel."""

    OPTION: ClassVar[str] = "mono"
    CHANNELS: ClassVar[int] = 1


@dataclass(unsafe_hash=True)
class MidSideStereo(StereoConfig):
    """A Haas delay of `haas_ms` on the right channel, then the side signal scaled by `width`
    (0 = mono, 1 = plain Haas, 1.5 = wide)."""

    OPTION: ClassVar[str] = "mid_side"
    width: float = 1.0
    haas_ms: float = 12.0

    def validate(self) -> None:
        check_range(f"{self.KEY}.width", self.width, 0.0, 1.5)
        check_range(f"{self.KEY}.haas_ms", self.haas_ms, 0.0, 40.0)


@dataclass(unsafe_hash=True)
class DualSeedStereo(StereoConfig):
    """The right channel generated from a second seed derived from the left one (see sda.seeds)."""

    OPTION: ClassVar[str] = "dual_seed"


@dataclass(unsafe_hash=True)
class ExportConfig(GroupOption):
    """The file format (an option of `export`). The pipeline works at 48 kHz and resamples
    once, at the end, to `sample_rate`."""

    KEY: ClassVar[str] = "export"
    NAME_KEY: ClassVar[str] = "format"
    BIT_DEPTHS: ClassVar[tuple[int, ...]] = ()
    sample_rate: int = 48000

    @property
    def format(self) -> str:
        return self.OPTION

    def validate(self) -> None:
        if self.sample_rate not in SAMPLE_RATES:
            raise ConfigError(
                f"{self.KEY}.sample_rate", self.sample_rate, f"one of {', '.join(map(str, SAMPLE_RATES))}"
            )


@dataclass(unsafe_hash=True)
class WavExport(ExportConfig):
    """WAV: 16-bit PCM (TPDF dither), 24-bit PCM or 32-bit float."""

    OPTION: ClassVar[str] = "wav"
    BIT_DEPTHS: ClassVar[tuple[int, ...]] = tuple(FORMATS["wav"])
    bit_depth: int = 24

    def validate(self) -> None:
        super().validate()
        _check_bit_depth(self, " (16 = PCM, 24 = PCM, 32 = float)")


@dataclass(unsafe_hash=True)
class FlacExport(ExportConfig):
    """FLAC: 16-bit (TPDF dither) or 24-bit, lossless."""

    OPTION: ClassVar[str] = "flac"
    BIT_DEPTHS: ClassVar[tuple[int, ...]] = tuple(FORMATS["flac"])
    bit_depth: int = 24

    def validate(self) -> None:
        super().validate()
        _check_bit_depth(self, "")


@dataclass(unsafe_hash=True)
class OggExport(ExportConfig):
    """Ogg Vorbis at `quality` in [0, 1] (libsndfile's VBR quality)."""

    OPTION: ClassVar[str] = "ogg"
    quality: float = 0.7

    @property
    def bit_depth(self) -> int:
        """Vorbis has no bit depth; 16 stands for its nominal precision in file records."""
        return 16

    def validate(self) -> None:
        super().validate()
        check_range(f"{self.KEY}.quality", self.quality, 0.0, 1.0)


def _check_bit_depth(export: WavExport | FlacExport, note: str) -> None:
    if export.bit_depth not in export.BIT_DEPTHS:
        raise ConfigError(
            f"{export.KEY}.bit_depth",
            export.bit_depth,
            f"{export.OPTION} allows {', '.join(map(str, export.BIT_DEPTHS))}{note}",
        )


# Every option of every group, by group and name: the YAML files in conf/<group>/ name these.
OPTIONS: dict[str, dict[str, type[GroupOption]]] = {
    "chunking": {c.OPTION: c for c in (CrossfadeChunking, LatentInterpChunking)},
    "stereo": {c.OPTION: c for c in (MonoStereo, MidSideStereo, DualSeedStereo)},
    "export": {c.OPTION: c for c in (WavExport, FlacExport, OggExport)},
}
# The option a group takes when the Python API leaves it out (conf/config.yaml's defaults).
DEFAULT_OPTIONS: dict[str, type[GroupOption]] = {
    "chunking": CrossfadeChunking,
    "stereo": MonoStereo,
    "export": WavExport,
}


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
    # A group with several options is typed by its base class and left MISSING here, so Hydra can
    # merge any option into it (a default instance would fix the type); __post_init__ gives the
    # Python API the default option.
    chunking: ChunkingConfig = MISSING
    stereo: StereoConfig = MISSING
    export: ExportConfig = MISSING
    phase: PhaseConfig = field(default_factory=PhaseConfig)

    def __post_init__(self) -> None:
        for group, option in DEFAULT_OPTIONS.items():
            value = getattr(self, group)
            if value == MISSING:
                object.__setattr__(self, group, option())
            elif not isinstance(value, OPTIONS[group].get(getattr(value, "OPTION", None), ())):
                allowed = ", ".join(f"{c.__name__}" for c in OPTIONS[group].values())
                raise ConfigError(group, value, f"one of {allowed}")
        super().__post_init__()

    def validate(self) -> None:
        check_seed("seed", self.seed)
        if self.count < 1:
            raise ConfigError("count", self.count, "an integer >= 1")
        if self.seed + self.count - 1 > MAX_SEED:
            raise ConfigError("count", self.count, f"seed + count - 1 must stay <= {MAX_SEED}; seed is {self.seed}")
        check_range("duration_s", self.duration_s, MIN_DURATION_S, MAX_DURATION_S)
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
    overrides before composing (see sda.run), and the job compares what it made with it.
    `dry_run`: pre-flight only; print the plan and its time estimate, render and write nothing."""

    reproduce: str | None = None
    dry_run: bool = False

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
