"""Configuration schemas, validation, and their registration in Hydra's ConfigStore.

Each config group (model, chunking, stereo, export) has a dataclass schema; YAML files in
`conf/<group>/` name it in their defaults list, so Hydra checks types while composing. The
composed config is turned into typed objects once, at the boundary, by `to_run_config`: unknown
keys (also ones added with `+key=`) are rejected, then `OmegaConf.to_object` builds the
dataclasses, whose `validate()` checks ranges and names the full key, the value and what is
allowed. After validation an object is sealed: assigning to it raises.

The schemas are not `frozen=True` dataclasses because OmegaConf marks frozen structured configs
read-only, and Hydra could no longer merge YAML and overrides into them.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from sda.errors import ConfigError

MAX_SEED = 2**32 - 1
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


class Sealed:
    """Dataclass mixin: `validate()` runs after `__init__`, then assignment raises."""

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_sealed", False):
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: configs are read-only")
        object.__setattr__(self, name, value)

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "_sealed", True)

    def validate(self) -> None:
        """Range checks; raise ConfigError naming the full key."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (enums as their values)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_range(key: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(key, value, f"allowed range is {bracket}{low:g}, {high:g}]")


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
        _check_range(f"{self.KEY}.chunk_s", self.chunk_s, 0.0, 60.0, low_open=True)
        _check_range(f"{self.KEY}.overlap_ms", self.overlap_ms, 0.0, 2000.0)
        if self.overlap_ms / 1000.0 > self.chunk_s / 2:
            raise ConfigError(
                f"{self.KEY}.overlap_ms",
                self.overlap_ms,
                f"at most half of chunking.chunk_s ({self.chunk_s * 500:g} ms)",
            )
        _check_range(f"{self.KEY}.anchor_interval_s", self.anchor_interval_s, 0.05, 600.0)
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
        _check_range(f"{self.KEY}.width", self.width, 0.0, 1.5)
        _check_range(f"{self.KEY}.haas_ms", self.haas_ms, 0.0, 40.0)

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
        _check_range(f"{self.KEY}.ogg_quality", self.ogg_quality, 0.0, 1.0)

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
        _check_range(f"{self.KEY}.iterations", self.iterations, 0, 1000)
        _check_range(f"{self.KEY}.momentum", self.momentum, 0.0, 1.0)
        if self.momentum >= 1.0:
            raise ConfigError(f"{self.KEY}.momentum", self.momentum, "allowed range is [0, 1) (1 diverges)")


_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


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
        if isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", self.seed, f"an integer in [0, {MAX_SEED}] (2^32 - 1)")
        if self.count < 1:
            raise ConfigError("count", self.count, "an integer >= 1")
        if self.seed + self.count - 1 > MAX_SEED:
            raise ConfigError("count", self.count, f"seed + count - 1 must stay <= {MAX_SEED}; seed is {self.seed}")
        _check_range("duration_s", self.duration_s, 0.0, MAX_DURATION_S, low_open=True)
        if not _DEVICE_PATTERN.match(self.device):
            raise ConfigError("device", self.device, "auto, cpu, cuda or cuda:N")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device", self.device, "no CUDA device is available here; use auto or cpu")
        if self.batch_size < 0:
            raise ConfigError("batch_size", self.batch_size, "0 (automatic) or a positive integer")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.count))

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

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


def check_known_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Reject keys the schema does not declare (Hydra's `+key=value` adds them regardless)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            where = f"in {prefix[:-1]}" if prefix else "at the top level"
            raise ConfigError(
                full, OmegaConf.select(cfg, str(key), throw_on_missing=False), f"unknown key; keys {where}: {allowed}"
            )
        sub_type = hints[key]
        node = cfg._get_node(key)  # noqa: SLF001 - the only way to see a node without resolving it
        if sub_type is not None and dataclasses.is_dataclass(sub_type) and isinstance(node, DictConfig):
            check_known_keys(node, sub_type, f"{full}.")


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Validate a composed `sda.run` config into a sealed RunConfig (raises ConfigError)."""
    return _to_object(cfg, RunConfig)


def _to_object(cfg: DictConfig, schema: type) -> Any:
    cfg = cfg.copy()
    if "hydra" in cfg:
        with _open(cfg):
            del cfg["hydra"]
    check_known_keys(cfg, schema)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required but not set (give it as {missing[0]}=...)")
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, schema):
        raise ConfigError("config", type(obj).__name__, f"expected a {schema.__name__}")
    return obj


class _open:
    """Temporarily lift struct mode to edit a copy."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> None:
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc: object) -> None:
        OmegaConf.set_struct(self.cfg, True)


def run_config_from_dict(data: dict[str, Any], schema: type = RunConfig) -> Any:
    """Build a validated config from a plain dict (a sidecar's `config`), through the schema."""
    base = OmegaConf.structured(schema)
    cfg = OmegaConf.merge(base, OmegaConf.create(data))
    return _to_object(cfg, schema)


# --------------------------------------------------------------------------------------------
# Training and evaluation


@dataclass(unsafe_hash=True)
class DatasetConfig(Sealed):
    """Where the training audio is. With `synthesize_demo`, sda writes its demo corpus into
    `path` first (deterministic; only when missing or changed)."""

    KEY: ClassVar[str] = "dataset"
    path: str = MISSING
    synthesize_demo: bool = False
    demo_seed: int = 0
    validation_fraction: float = 0.15
    hop_fraction: float = 0.5
    silence_dbfs: float = -60.0

    def validate(self) -> None:
        if self.path != MISSING and not self.path.strip():
            raise ConfigError(f"{self.KEY}.path", self.path, "a folder of audio files (or use dataset=demo)")
        _check_range(f"{self.KEY}.validation_fraction", self.validation_fraction, 0.0, 0.5, low_open=True)
        _check_range(f"{self.KEY}.hop_fraction", self.hop_fraction, 0.1, 1.0)
        _check_range(f"{self.KEY}.silence_dbfs", self.silence_dbfs, -120.0, 0.0)


@dataclass(unsafe_hash=True)
class AugmentationConfig(Sealed):
    """Augmentation for tiny datasets; see sda.data.windows for why each is there."""

    KEY: ClassVar[str] = "augmentation"
    enabled: bool = True
    jitter: bool = True
    gain_db: float = 6.0
    semitone_steps: tuple[int, ...] = (-2, -1, 0, 1, 2)
    p_varispeed: float = 0.5

    def validate(self) -> None:
        object.__setattr__(self, "semitone_steps", tuple(self.semitone_steps))
        _check_range(f"{self.KEY}.gain_db", self.gain_db, 0.0, 24.0)
        _check_range(f"{self.KEY}.p_varispeed", self.p_varispeed, 0.0, 1.0)
        for step in self.semitone_steps:
            _check_range(f"{self.KEY}.semitone_steps", step, -12, 12)


@dataclass(unsafe_hash=True)
class SpectrogramConfig(Sealed):
    """Log-mel settings a model is trained with (48 kHz is the pipeline's internal rate)."""

    KEY: ClassVar[str] = "spectrogram"
    sample_rate: int = INTERNAL_SAMPLE_RATE
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    window_s: float = 1.0

    def validate(self) -> None:
        if self.sample_rate != INTERNAL_SAMPLE_RATE:
            raise ConfigError(
                f"{self.KEY}.sample_rate", self.sample_rate, f"{INTERNAL_SAMPLE_RATE} (the internal rate)"
            )
        if self.n_fft not in (512, 1024, 2048, 4096):
            raise ConfigError(f"{self.KEY}.n_fft", self.n_fft, "one of 512, 1024, 2048, 4096")
        _check_range(f"{self.KEY}.hop_length", self.hop_length, 64, self.n_fft // 2)
        _check_range(f"{self.KEY}.n_mels", self.n_mels, 16, 256)
        _check_range(f"{self.KEY}.window_s", self.window_s, 0.25, 4.0)


@dataclass(unsafe_hash=True)
class TrainConfig(Sealed):
    """`python -m sda.train`: writes `models_dir/NAME.pt`; training state lives in
    `models_dir/NAME.train/` so `resume=true` can continue an interrupted run."""

    name: str = MISSING
    seed: int = 0
    device: str = "cpu"
    models_dir: str = "models"
    max_epochs: int = 400
    max_minutes: float = 14.0
    batch_size: int = 32
    learning_rate: float = 2e-3
    latent_dim: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    beta: float = 1.0
    kl_warmup_epochs: int = 40
    free_bits: float = 0.05
    spectral_weight: float = 0.0
    grad_clip: float = 5.0
    patience: int = 40
    min_delta: float = 0.0
    checkpoint_every: int = 10
    resume: bool = False
    overwrite: bool = False
    threads: int = 0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    spectrogram: SpectrogramConfig = field(default_factory=SpectrogramConfig)

    def validate(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.name != MISSING and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ConfigError(
                "name", self.name, "required: letters, digits, '_', '-', '.' (the model is saved as models/NAME.pt)"
            )
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        if not _DEVICE_PATTERN.match(self.device) or self.device == "auto":
            raise ConfigError("device", self.device, "cpu, cuda or cuda:N")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device", self.device, "no CUDA device is available here; use cpu")
        _check_range("max_epochs", self.max_epochs, 1, 100000)
        _check_range("max_minutes", self.max_minutes, 0.0, 10080.0, low_open=True)
        _check_range("batch_size", self.batch_size, 1, 4096)
        _check_range("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        _check_range("latent_dim", self.latent_dim, 2, 1024)
        if not self.channels or min(self.channels) < 1:
            raise ConfigError("channels", list(self.channels), "at least one level, each >= 1")
        _check_range("beta", self.beta, 0.0, 100.0)
        _check_range("kl_warmup_epochs", self.kl_warmup_epochs, 0, 100000)
        _check_range("free_bits", self.free_bits, 0.0, 10.0)
        _check_range("spectral_weight", self.spectral_weight, 0.0, 1e6)
        _check_range("grad_clip", self.grad_clip, 0.0, 1e6, low_open=True)
        _check_range("patience", self.patience, 1, 100000)
        _check_range("checkpoint_every", self.checkpoint_every, 1, 100000)
        _check_range("threads", self.threads, 0, 1024)


@dataclass(unsafe_hash=True)
class EvaluateConfig(Sealed):
    """`python -m sda.evaluate`: reconstruction and Fréchet distance against two baselines."""

    seed: int = 0
    device: str = "cpu"
    generated_clips: int = 32
    clip_s: float = 4.0
    output: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    phase: PhaseConfig = field(default_factory=PhaseConfig)

    def validate(self) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        if not _DEVICE_PATTERN.match(self.device) or self.device == "auto":
            raise ConfigError("device", self.device, "cpu, cuda or cuda:N")
        _check_range("generated_clips", self.generated_clips, 2, 10000)
        _check_range("clip_s", self.clip_s, 0.5, 60.0)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    return _to_object(cfg, TrainConfig)


def to_evaluate_config(cfg: DictConfig) -> EvaluateConfig:
    return _to_object(cfg, EvaluateConfig)


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="sda_run_schema", node=RunConfig)
    cs.store(name="sda_train_schema", node=TrainConfig)
    cs.store(name="sda_evaluate_schema", node=EvaluateConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="chunking", name="schema", node=ChunkingConfig)
    cs.store(group="stereo", name="schema", node=StereoConfig)
    cs.store(group="export", name="schema", node=ExportConfig)
    cs.store(group="dataset", name="schema", node=DatasetConfig)


def plain_container(cfg: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
