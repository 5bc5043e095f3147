"""Schema of `python -m sda.evaluate`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from sda.config.base import Sealed, check_device, check_range, check_seed
from sda.config.generation import ModelConfig, PhaseConfig
from sda.config.training import DatasetConfig
from sda.errors import ConfigError


@dataclass(unsafe_hash=True)
class CorpusConfig(DatasetConfig):
    """One corpus of a suite: the fields of `dataset` (named in errors as suite.corpora.*), and
    the model to evaluate on it when not `model.checkpoint` (a model trained on this corpus)."""

    KEY: ClassVar[str] = "suite.corpora.*"
    checkpoint: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.checkpoint is not None and not self.checkpoint.strip():
            raise ConfigError(f"{self.KEY}.checkpoint", self.checkpoint, "a model name or a checkpoint path, or null")


@dataclass(unsafe_hash=True)
class SuiteConfig(Sealed):
    """Corpora evaluated in one run, by name (conf/suite/*.yaml; Hydra cannot add a corpus
    from the command line, but can change one: `suite.corpora.demo.path=...`). Empty: evaluate
    `dataset` alone."""

    KEY: ClassVar[str] = "suite"
    # a dict cannot be hashed; the names and folders are compared, not hashed
    corpora: dict[str, CorpusConfig] = field(default_factory=dict, hash=False)

    def validate(self) -> None:
        for name in self.corpora:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ConfigError(f"{self.KEY}.corpora", name, "corpus names of letters, digits, '_', '-', '.'")


@dataclass(unsafe_hash=True)
class EvaluateConfig(Sealed):
    """`python -m sda.evaluate`: the model between two baselines and two real-data references
    (see sda.evaluation), on `dataset` or on every corpus of `suite`."""

    seed: int = 0
    device: str = "cpu"
    generated_clips: int = 32
    clip_s: float = 4.0
    output: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)

    def validate(self) -> None:
        check_seed("seed", self.seed)
        check_device("device", self.device)
        check_range("generated_clips", self.generated_clips, 2, 10000)
        check_range("clip_s", self.clip_s, 0.5, 60.0)
