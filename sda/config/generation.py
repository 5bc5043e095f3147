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
from sda.dsp.finish import ONESHOT_END_SILENCE_MS
from sda.dsp.spectrogram import MAX_WINDOW_S
from sda.encode import FORMATS
from sda.errors import ConfigError
from sda.novelty import NEAR_COPY_DB

MAX_DURATION_S = 600.0
# 10 ms: at least 441 frames at every export rate (a shorter file is no sound, only a click).
MIN_DURATION_S = 0.01
SAMPLE_RATES = (44100, 48000, 96000)
MAX_WRITERS = 64  # writer threads of one job
INTERNAL_SAMPLE_RATE = 48000


class InverseMel(str, Enum):
    """How a mel magnitude becomes a linear magnitude before phase reconstruction."""

    pinv = "pinv"  # one matrix product with the filterbank's pseudo-inverse
    lstsq = "lstsq"  # a least-squares solve per call (what torchaudio's InverseMelScale does)


class Normalize(str, Enum):
    """How an output's level is set (an export setting)."""

    peak = "peak"  # sample peak at -1 dBFS, as sda always did
    loudness = "loudness"  # integrated loudness at export.loudness_lufs, true peak at most export.true_peak_dbtp


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

    @property
    def mode(self) -> str:
        """The option's name (`chunking.mode == "crossfade"`)."""
        return self.OPTION

    def to_dict(self) -> dict[str, Any]:
        """The option's name first, then its fields (what sidecars and identities hold)."""
        return {self.NAME_KEY: self.OPTION, **super().to_dict()}


@dataclass(unsafe_hash=True)
class ChunkingConfig(GroupOption):
    """How an output is built from model windows (an option of `chunking`)."""

    KEY: ClassVar[str] = "chunking"

    def longest_output_s(self, duration_s: float) -> float:
        """The longest output this option makes for `duration_s` (what disk estimates use)."""
        return duration_s

    def length_rule(self, duration_s: float) -> str:
        """What decides an output's length, in words (the sidecar's `length.rule`)."""
        return f"exactly duration_s={duration_s:g} s: round(duration_s * sample_rate) frames"


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
class OneshotChunking(ChunkingConfig):
    """A hit for a sample library: one model window decoded from one latent and reconstructed from
    its start (the attack intact, no crossfade), ending when the sound does: trailing audio below
    `silence_db` (relative to the hit's peak) is trimmed, then `fade_ms` fade to zero and 5 ms of
    silence end it, so the end cannot click. `duration_s` is the longest a hit may be (one model
    window at most)."""

    OPTION: ClassVar[str] = "oneshot"
    silence_db: float = -60.0
    fade_ms: float = 10.0

    def validate(self) -> None:
        check_range(f"{self.KEY}.silence_db", self.silence_db, -120.0, -20.0)
        check_range(f"{self.KEY}.fade_ms", self.fade_ms, 0.0, 200.0, low_open=True)

    def longest_output_s(self, duration_s: float) -> float:
        return min(duration_s, MAX_WINDOW_S)

    def length_rule(self, duration_s: float) -> str:
        return (
            f"oneshot: the hit's own length, where its tail falls below {self.silence_db:g} dB re its peak, "
            f"plus a {self.fade_ms:g} ms fade to zero and {ONESHOT_END_SILENCE_MS:g} ms of silence; "
            f"at most duration_s={duration_s:g} s and one model window"
        )


@dataclass(unsafe_hash=True)
class StereoConfig(GroupOption):
    """How the channels are made (an option of `stereo`)."""

    KEY: ClassVar[str] = "stereo"
    CHANNELS: ClassVar[int] = 2

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
    once, at the end, to `sample_rate`.

    Every format sets the level the same way. `normalize=peak` (the default): the sample peak at
    -1 dBFS. `normalize=loudness`: the integrated loudness (ITU-R BS.1770) at `loudness_lufs`,
    with the true peak (4x oversampled) at most `true_peak_dbtp`; where the target cannot be
    reached under that ceiling, the file is made at the ceiling and its sidecar says by how many LU
    it fell short. With `normalize=peak` the loudness fields change nothing, so `to_dict` (the
    sidecar's config and an output's identity) leaves all three out: peak outputs keep the
    identities earlier sda versions gave them."""

    KEY: ClassVar[str] = "export"
    NAME_KEY: ClassVar[str] = "format"
    BIT_DEPTHS: ClassVar[tuple[int, ...]] = ()  # the bit depths a format allows (none: not chosen)
    BIT_DEPTH_NOTE: ClassVar[str] = ""  # what the error line adds after them
    NORMALIZATION_FIELDS: ClassVar[tuple[str, ...]] = ("normalize", "loudness_lufs", "true_peak_dbtp")
    sample_rate: int = 48000
    normalize: Normalize = Normalize.peak
    # EBU R 128's level: 90 % of the sonic-pi drum and percussion hits reach it under -1 dBTP
    # (their median is -18 LUFS), and so do the shipped model's textures.
    loudness_lufs: float = -23.0
    true_peak_dbtp: float = -1.0

    @property
    def format(self) -> str:
        return self.OPTION

    def validate(self) -> None:
        if self.sample_rate not in SAMPLE_RATES:
            raise ConfigError(
                f"{self.KEY}.sample_rate", self.sample_rate, f"one of {', '.join(map(str, SAMPLE_RATES))}"
            )
        check_range(f"{self.KEY}.loudness_lufs", self.loudness_lufs, -60.0, -5.0)
        # -1 dBTP at most: every file sda writes keeps its sample peak at or under -1 dBFS.
        check_range(f"{self.KEY}.true_peak_dbtp", self.true_peak_dbtp, -24.0, -1.0)
        if self.BIT_DEPTHS and getattr(self, "bit_depth", None) not in self.BIT_DEPTHS:
            raise ConfigError(
                f"{self.KEY}.bit_depth",
                getattr(self, "bit_depth", None),
                f"{self.OPTION} allows {', '.join(map(str, self.BIT_DEPTHS))}{self.BIT_DEPTH_NOTE}",
            )

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if self.normalize == Normalize.peak:
            for name in self.NORMALIZATION_FIELDS:
                del data[name]
        return data


@dataclass(unsafe_hash=True)
class WavExport(ExportConfig):
    """WAV: 16-bit PCM (TPDF dither), 24-bit PCM or 32-bit float."""

    OPTION: ClassVar[str] = "wav"
    BIT_DEPTHS: ClassVar[tuple[int, ...]] = tuple(FORMATS["wav"])
    BIT_DEPTH_NOTE: ClassVar[str] = " (16 = PCM, 24 = PCM, 32 = float)"
    bit_depth: int = 24


@dataclass(unsafe_hash=True)
class FlacExport(ExportConfig):
    """FLAC: 16-bit (TPDF dither) or 24-bit, lossless."""

    OPTION: ClassVar[str] = "flac"
    BIT_DEPTHS: ClassVar[tuple[int, ...]] = tuple(FORMATS["flac"])
    bit_depth: int = 24


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


@dataclass(unsafe_hash=True)
class SourceConfig(GroupOption):
    """Where an output's latents come from (an option of `source`; see sda.sources).

    Every option but `prior` has a `spread` in [0, 1]: each latent becomes
    sqrt(1 - spread^2) * (the source's latent) + spread * (the prior's latent for that seed), so
    0 follows the source exactly and 1 is the prior render of the seed, bit for bit."""

    KEY: ClassVar[str] = "source"

    def audio_files(self) -> tuple[str, ...]:
        """The audio files this option reads, as given (none for prior and corpus)."""
        return ()


@dataclass(unsafe_hash=True)
class PriorSource(SourceConfig):
    """Latents drawn from the prior N(0, I) by the item's seed: what sda has always done."""

    OPTION: ClassVar[str] = "prior"


@dataclass(unsafe_hash=True)
class FileSource(SourceConfig):
    """The latent trajectory of one audio file (`path`: any format and rate soundfile reads),
    from `offset_s` seconds into it, looped when the output is longer than what is left."""

    OPTION: ClassVar[str] = "file"
    path: str = ""
    spread: float = 0.0
    offset_s: float = 0.0

    def audio_files(self) -> tuple[str, ...]:
        return (self.path,)

    def validate(self) -> None:
        _check_path(f"{self.KEY}.path", self.path)
        _check_spread(self)
        check_range(f"{self.KEY}.offset_s", self.offset_s, 0.0, MAX_OFFSET_S)


@dataclass(unsafe_hash=True)
class CorpusSource(SourceConfig):
    """Latents of the model's own training windows (stored in its checkpoint), drawn by the seed."""

    OPTION: ClassVar[str] = "corpus"
    spread: float = 0.0

    def validate(self) -> None:
        _check_spread(self)


@dataclass(unsafe_hash=True)
class MorphSource(SourceConfig):
    """A path through the latent trajectories of two or more files (`paths`), from the first at
    the start of the output to the last at its end (SLERP between neighbours)."""

    OPTION: ClassVar[str] = "morph"
    paths: tuple[str, ...] = ()
    spread: float = 0.0

    def audio_files(self) -> tuple[str, ...]:
        return tuple(self.paths)

    def validate(self) -> None:
        paths = tuple(self.paths)
        if len(paths) < 2:
            raise ConfigError(f"{self.KEY}.paths", list(paths), "two or more audio files: source.paths=[A.wav,B.wav]")
        for path in paths:
            _check_path(f"{self.KEY}.paths", path)
        object.__setattr__(self, "paths", paths)
        _check_spread(self)


MAX_OFFSET_S = 86400.0


def _check_path(key: str, path: str) -> None:
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(key, path, "the path of an audio file (any format soundfile reads)")


def _check_spread(option: FileSource | CorpusSource | MorphSource) -> None:
    check_range(f"{option.KEY}.spread", option.spread, 0.0, 1.0)


# Every option of every group, by group and name: the YAML files in conf/<group>/ name these.
OPTIONS: dict[str, dict[str, type[GroupOption]]] = {
    "chunking": {c.OPTION: c for c in (CrossfadeChunking, LatentInterpChunking, OneshotChunking)},
    "stereo": {c.OPTION: c for c in (MonoStereo, MidSideStereo, DualSeedStereo)},
    "export": {c.OPTION: c for c in (WavExport, FlacExport, OggExport)},
    "source": {c.OPTION: c for c in (PriorSource, FileSource, CorpusSource, MorphSource)},
}
# The option a group takes when the Python API leaves it out (conf/config.yaml's defaults).
DEFAULT_OPTIONS: dict[str, type[GroupOption]] = {
    "chunking": CrossfadeChunking,
    "stereo": MonoStereo,
    "export": WavExport,
    "source": PriorSource,
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
class QualityConfig(Sealed):
    """The memorization check's verdict on every output (nothing here changes the audio).

    An output whose nearest training window (sda.novelty, in dB) lies nearer than `min_novelty`
    is rated red ("near copy of FILE at T s"); with `reject_copies` it is also recorded as
    rejected instead of done (the file is still written: see sda.memorization)."""

    KEY: ClassVar[str] = "quality"
    min_novelty: float = NEAR_COPY_DB  # dB; why this default: sda.memorization
    reject_copies: bool = False

    def validate(self) -> None:
        check_range(f"{self.KEY}.min_novelty", self.min_novelty, 0.0, 60.0)


@dataclass(unsafe_hash=True)
class GenerationConfig(Sealed):
    """Everything that decides the audio an output gets, plus how to compute it.

    `count` outputs are made, with seeds seed .. seed+count-1."""

    seed: int = 0
    count: int = 1
    duration_s: float = 10.0
    device: str = "auto"
    batch_size: int = 0  # 0: chosen from the device
    writers: int = 0  # threads writing finished outputs; 0: chosen from the device (sda.runner)
    model: ModelConfig = field(default_factory=ModelConfig)
    # A group with several options is typed by its base class and left MISSING here, so Hydra can
    # merge any option into it (a default instance would fix the type); __post_init__ gives the
    # Python API the default option.
    chunking: ChunkingConfig = MISSING
    stereo: StereoConfig = MISSING
    export: ExportConfig = MISSING
    source: SourceConfig = MISSING
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

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
        check_range("writers", self.writers, 0, MAX_WRITERS)

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
