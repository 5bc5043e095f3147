"""Schemas of `python -m sda.train`: the dataset, augmentation, spectrogram and training run."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

from sda.config.base import Sealed, check_device, check_range, check_seed
from sda.config.generation import INTERNAL_SAMPLE_RATE
from sda.errors import ConfigError


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
        check_range(f"{self.KEY}.validation_fraction", self.validation_fraction, 0.0, 0.5, low_open=True)
        check_range(f"{self.KEY}.hop_fraction", self.hop_fraction, 0.1, 1.0)
        check_range(f"{self.KEY}.silence_dbfs", self.silence_dbfs, -120.0, 0.0)


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
        check_range(f"{self.KEY}.gain_db", self.gain_db, 0.0, 24.0)
        check_range(f"{self.KEY}.p_varispeed", self.p_varispeed, 0.0, 1.0)
        for step in self.semitone_steps:
            check_range(f"{self.KEY}.semitone_steps", step, -12, 12)


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
        check_range(f"{self.KEY}.hop_length", self.hop_length, 64, self.n_fft // 2)
        check_range(f"{self.KEY}.n_mels", self.n_mels, 16, 256)
        check_range(f"{self.KEY}.window_s", self.window_s, 0.25, 4.0)


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
        check_seed("seed", self.seed)
        check_device("device", self.device, allow_auto=False)
        check_range("max_epochs", self.max_epochs, 1, 100000)
        check_range("max_minutes", self.max_minutes, 0.0, 10080.0, low_open=True)
        check_range("batch_size", self.batch_size, 1, 4096)
        check_range("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_range("latent_dim", self.latent_dim, 2, 1024)
        if not self.channels or min(self.channels) < 1:
            raise ConfigError("channels", list(self.channels), "at least one level, each >= 1")
        check_range("beta", self.beta, 0.0, 100.0)
        check_range("kl_warmup_epochs", self.kl_warmup_epochs, 0, 100000)
        check_range("free_bits", self.free_bits, 0.0, 10.0)
        check_range("spectral_weight", self.spectral_weight, 0.0, 1e6)
        check_range("grad_clip", self.grad_clip, 0.0, 1e6, low_open=True)
        check_range("patience", self.patience, 1, 100000)
        check_range("checkpoint_every", self.checkpoint_every, 1, 100000)
        check_range("threads", self.threads, 0, 1024)
