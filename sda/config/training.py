"""Schemas of `python -m sda.train`: the dataset and the training run.

The augmentation, spectrogram and model groups are the types the code uses at run time
(`sda.data.windows.Augmentation`, `sda.dsp.spectrogram.SpectrogramSettings`,
`sda.model.ModelHyperparameters`): each is a sealed dataclass that serves as its own schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

from sda.config.base import Sealed, check_device, check_range, check_seed
from sda.config.generation import INTERNAL_SAMPLE_RATE
from sda.data.windows import Augmentation
from sda.dsp.spectrogram import SpectrogramSettings
from sda.errors import ConfigError
from sda.model import ModelHyperparameters


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
class TrainConfig(Sealed):
    """`python -m sda.train`: writes `models_dir/NAME.pt`; training state lives in
    `models_dir/NAME.train/` so `resume=true` can continue an interrupted run."""

    name: str = MISSING
    seed: int = 0
    device: str = "auto"
    models_dir: str = "models"
    max_epochs: int = 400
    max_minutes: float = 14.0
    batch_size: int = 32
    learning_rate: float = 2e-3
    beta: float = 1.0
    kl_warmup_epochs: int = 40
    free_bits: float = 0.05
    spectral_weight: float = 1000.0
    grad_clip: float = 5.0
    patience: int = 40
    min_delta: float = 0.0
    checkpoint_every: int = 10
    resume: bool = False
    overwrite: bool = False
    threads: int = 0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    augmentation: Augmentation = field(default_factory=Augmentation)
    spectrogram: SpectrogramSettings = field(default_factory=SpectrogramSettings)
    model: ModelHyperparameters = field(default_factory=ModelHyperparameters)

    def validate(self) -> None:
        if self.name != MISSING and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ConfigError(
                "name", self.name, "required: letters, digits, '_', '-', '.' (the model is saved as models/NAME.pt)"
            )
        check_seed("seed", self.seed)
        check_device("device", self.device)
        check_range("max_epochs", self.max_epochs, 1, 100000)
        check_range("max_minutes", self.max_minutes, 0.0, 10080.0, low_open=True)
        check_range("batch_size", self.batch_size, 1, 4096)
        check_range("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_range("beta", self.beta, 0.0, 100.0)
        check_range("kl_warmup_epochs", self.kl_warmup_epochs, 0, 100000)
        check_range("free_bits", self.free_bits, 0.0, 10.0)
        check_range("spectral_weight", self.spectral_weight, 0.0, 1e6)
        check_range("grad_clip", self.grad_clip, 0.0, 1e6, low_open=True)
        check_range("patience", self.patience, 1, 100000)
        check_range("checkpoint_every", self.checkpoint_every, 1, 100000)
        check_range("threads", self.threads, 0, 1024)
        if self.spectrogram.sample_rate != INTERNAL_SAMPLE_RATE:
            key = f"{SpectrogramSettings.KEY}.sample_rate"
            raise ConfigError(key, self.spectrogram.sample_rate, f"{INTERNAL_SAMPLE_RATE} (the internal rate)")
