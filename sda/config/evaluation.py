"""Schema of `python -m sda.evaluate`."""

from __future__ import annotations

from dataclasses import dataclass, field

from sda.config.base import Sealed, check_device, check_range, check_seed
from sda.config.generation import ModelConfig, PhaseConfig
from sda.config.training import DatasetConfig


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
        check_seed("seed", self.seed)
        check_device("device", self.device)
        check_range("generated_clips", self.generated_clips, 2, 10000)
        check_range("clip_s", self.clip_s, 0.5, 60.0)
