"""What a checkpoint's `training` section holds: the record of the run that made the model.

A record is plain data in the checkpoint (it goes through JSON; see `sda.model.checkpoint_record`)
and a `TrainingRecord` in Python. `TrainingRecord.from_dict` reads any sda's record: a field an
older record lacks takes its default (NaN for a figure, 0 for a count, empty for text), and keys
it does not know are passed over. `config` and `augmentation` stay dicts: they are snapshots of
the settings of the sda that wrote them, whose layout may differ from today's (the shipped model's
record has `latent_dim` at the top of its config, today's sda has it under `model`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _known_fields(cls: type, data: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The entries of `data` that are fields of `cls` (less `exclude`)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    return {key: value for key, value in data.items() if key in names}


@dataclass(frozen=True)
class DatasetRecord:
    """The training data: its fingerprint (`sda.data.folder.DatasetFingerprint`) and how it was used.
    `path` and the skipped files' paths are printable text (`sda.data.folder.printable`).
    `skipped` names every file that was not used, and why: unreadable, or read but giving no window
    (silent). `train_window_files` and `validation_window_files` count the files the windows came
    from (the training files' when validation is not independent); `short_files` those of them
    shorter than a window, each trained on as one window padded with silence."""

    file_count: int = 0
    total_seconds: float = math.nan
    content_hash: str = ""
    path: str = ""
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"path": ..., "reason": ...}]
    train_files: int = 0
    validation_files: int = 0
    train_windows: int = 0
    validation_windows: int = 0
    train_window_files: int = 0
    validation_window_files: int = 0
    short_files: int = 0
    independent_validation: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetRecord:
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's figures: mean training loss per window (with that epoch's beta) and the
    validation figures at full beta (see `sda.training.validate`)."""

    epoch: int = 0
    beta: float = math.nan
    train_loss: float = math.nan
    validation_loss: float = math.nan
    validation_reconstruction: float = math.nan
    validation_kl: float = math.nan
    validation_mel_spectral_convergence: float = math.nan
    active_dims: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class MachineRecord:
    platform: str = ""
    processor: str = ""
    threads: int = 0
    device: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineRecord:
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class TrainingRecord:
    """The run that made a model. Losses are per window: squared error of the normalized log-mel
    summed over the window, plus beta times the KL (see `sda.training`)."""

    dataset: DatasetRecord = field(default_factory=DatasetRecord)
    epochs: int = 0
    best_epoch: int = 0
    stopped_because: str = ""
    final_train_loss: float = math.nan
    final_validation_loss: float = math.nan
    best_validation_loss: float = math.nan
    validation_reconstruction: float = math.nan
    validation_kl: float = math.nan
    validation_mel_spectral_convergence: float = math.nan
    active_latent_dims: int = 0  # of the latent_dim numbers per latent frame
    latent_dim: int = 0
    prior_windows: int = 0  # training windows the sampling prior was fitted on (0: none, format 1-2)
    wall_time_s: float = math.nan
    windows_seen: int = 0
    windows_per_second: float = math.nan  # training windows per second of training steps, this session
    augmentation: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    machine: MachineRecord = field(default_factory=MachineRecord)
    versions: dict[str, str] = field(default_factory=dict)  # sda_version, torch_version, ...
    history: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's `training` section: the versions sit at the top level (`torch_version`
        ...), each epoch is a dict."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "versions"}
        history = [dataclasses.asdict(row) for row in data.pop("history")]
        return {
            **data,
            "dataset": dataclasses.asdict(self.dataset),
            "machine": dataclasses.asdict(self.machine),
            **self.versions,
            "history": history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRecord:
        """Read a record written by any sda (see the module docstring)."""
        nested = ("dataset", "machine", "versions", "history")
        return cls(
            dataset=DatasetRecord.from_dict(data.get("dataset", {})),
            machine=MachineRecord.from_dict(data.get("machine", {})),
            versions={key: str(value) for key, value in data.items() if key.endswith("_version")},
            history=[EpochRecord.from_dict(row) for row in data.get("history", [])],
            **_known_fields(cls, data, exclude=nested),
        )

    def summary(self, model_path: Path | str) -> str:
        """One line for the log: where the model went, the data, how training ended, speed."""
        data = self.dataset
        skipped = f", {len(data.skipped)} skipped" if data.skipped else ""
        short = f", {data.short_files} shorter than a window" if data.short_files else ""
        return (
            f"saved {model_path} | {data.file_count} files, {data.total_seconds:.1f} s{skipped} | "
            f"{data.train_windows} training windows from {data.train_window_files} files{short} | "
            f"{self.epochs} epochs ({self.stopped_because}) | train loss {self.final_train_loss:.1f}, "
            f"validation loss {self.final_validation_loss:.1f} "
            f"(best {self.best_validation_loss:.1f} at epoch {self.best_epoch}) | "
            f"{self.active_latent_dims}/{self.latent_dim} latent dims active | "
            f"{self.wall_time_s:.0f} s, {self.windows_per_second:.0f} windows/s"
        )
