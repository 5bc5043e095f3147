"""The convolutional VAE over log-mel windows, and its checkpoint format.

A window is `[n_mels, frames]` log-mel (frames = 1 + window_samples // hop). The encoder sees it
normalized per mel bin (mean/std of the training data, stored as buffers), padded at the top of
the time axis to a multiple of 2**levels frames so every stride-2 level halves it exactly; the
decoder mirrors that and crops back. Every layer's shape is fixed at construction from the
spectrogram settings and the hyperparameters; nothing is created on first forward.

Checkpoint: one file written by `torch.save` and read with `torch.load(weights_only=True)`, so
loading a stranger's checkpoint never runs code from it. It holds a dict:

    format          "sda-checkpoint"
    format_version  int (CHECKPOINT_FORMAT_VERSION)
    hyperparameters ModelHyperparameters as a dict
    spectrogram     SpectrogramSettings as a dict (compared on load, never assumed)
    training        the training record (dataset fingerprint, epochs, losses, versions, config)
    state_dict      tensors
    training_summary  (format 2) the training windows' latents and novelty index, or None
                    (sda.training_summary); a format-1 checkpoint has none: it loads, and the
                    memorization check of its outputs is "unavailable"
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from sda.dsp.spectrogram import SpectrogramSettings
from sda.errors import CheckpointError, ConfigError
from sda.files import file_sha256, write_atomic
from sda.schema import Sealed, check_range
from sda.training_summary import TrainingSummary

CHECKPOINT_FORMAT = "sda-checkpoint"
# 2: the training_summary section (training windows' latents and novelty index).
CHECKPOINT_FORMAT_VERSION = 2
PACKAGED_MODELS_DIR = Path(__file__).parent / "models"


@dataclass(unsafe_hash=True)
class ModelHyperparameters(Sealed):
    """Architecture of the VAE. `channels` lists the feature maps per stride-2 level. Also the
    `model` schema of `sda.train` (`model.latent_dim=...`): sealed (read-only) once validated."""

    KEY: ClassVar[str] = "model"
    latent_dim: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)

    def validate(self) -> None:
        check_range(f"{self.KEY}.latent_dim", self.latent_dim, 1, 1024)
        channels = tuple(self.channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 4096 for c in channels):
            raise ConfigError(f"{self.KEY}.channels", list(channels), "at least one level, each in [1, 4096]")
        object.__setattr__(self, "channels", channels)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelHyperparameters:
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) != known:
            raise CheckpointError(f"model hyperparameters hold keys {sorted(data)}; expected {sorted(known)}")
        return cls(latent_dim=int(data["latent_dim"]), channels=tuple(data["channels"]))


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


class MelVAE(nn.Module):
    """Convolutional VAE: `[batch, n_mels, frames]` log-mel <-> `[batch, latent_dim]` latents."""

    def __init__(self, settings: SpectrogramSettings, hyper: ModelHyperparameters) -> None:
        super().__init__()
        self.settings = settings
        self.hyper = hyper
        levels = len(hyper.channels)
        scale = 2**levels
        self.n_mels = settings.n_mels
        self.frames = settings.window_frames
        self.padded_mels = _round_up(self.n_mels, scale)
        self.padded_frames = _round_up(self.frames, scale)
        self.bottom_shape = (hyper.channels[-1], self.padded_mels // scale, self.padded_frames // scale)
        flat = math.prod(self.bottom_shape)

        self.register_buffer("mel_mean", torch.zeros(self.n_mels, 1))
        self.register_buffer("mel_std", torch.ones(self.n_mels, 1))

        encoder: list[nn.Module] = []
        in_ch = 1
        for out_ch in hyper.channels:
            encoder += [nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1), nn.SiLU()]
            in_ch = out_ch
        self.encoder = nn.Sequential(*encoder)
        self.to_mu = nn.Linear(flat, hyper.latent_dim)
        self.to_logvar = nn.Linear(flat, hyper.latent_dim)

        self.from_latent = nn.Linear(hyper.latent_dim, flat)
        decoder: list[nn.Module] = []
        chans = list(hyper.channels[::-1]) + [1]
        for i in range(levels):
            # kernel 4 / stride 2: every output cell gets the same number of taps (no checkerboard)
            decoder.append(nn.ConvTranspose2d(chans[i], chans[i + 1], kernel_size=4, stride=2, padding=1))
            if i < levels - 1:
                decoder.append(nn.SiLU())
        self.decoder = nn.Sequential(*decoder)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-mel-bin statistics `[n_mels]` of the training log-mels."""
        self.mel_mean.copy_(mean.reshape(self.n_mels, 1))
        self.mel_std.copy_(std.clamp(min=1e-3).reshape(self.n_mels, 1))

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        return (log_mel - self.mel_mean) / self.mel_std

    def encode(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[batch, n_mels, frames]` log-mel -> (mu, logvar), each `[batch, latent_dim]`."""
        x = self.normalize(log_mel)
        x = nn.functional.pad(
            x, (0, self.padded_frames - self.frames, 0, self.padded_mels - self.n_mels), mode="replicate"
        )
        h = self.encoder(x.unsqueeze(1)).flatten(1)
        return self.to_mu(h), self.to_logvar(h).clamp(-30.0, 20.0)

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """`[batch, latent_dim]` -> normalized log-mel `[batch, n_mels, frames]` (the training target space)."""
        h = self.from_latent(z).reshape(z.shape[0], *self.bottom_shape)
        return self.decoder(h)[:, 0, : self.n_mels, : self.frames]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """`[batch, latent_dim]` latents -> log-mel windows `[batch, n_mels, frames]` (never negative)."""
        return (self.decode_normalized(z) * self.mel_std + self.mel_mean).clamp(min=0.0)

    def forward(self, log_mel: torch.Tensor, generator: torch.Generator | None = None):
        """Reparameterized pass for training: returns (normalized reconstruction, mu, logvar)."""
        mu, logvar = self.encode(log_mel)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + noise * torch.exp(0.5 * logvar)
        return self.decode_normalized(z), mu, logvar


@dataclass
class LoadedModel:
    """A VAE ready for inference with what is known about where it came from."""

    vae: MelVAE
    path: Path
    name: str
    sha256: str
    training: dict[str, Any] = field(default_factory=dict)
    summary: TrainingSummary | None = None  # None: a format-1 checkpoint, or one saved without

    @property
    def settings(self) -> SpectrogramSettings:
        return self.vae.settings

    @property
    def latent_dim(self) -> int:
        return self.vae.hyper.latent_dim

    @property
    def device(self) -> torch.device:
        return self.vae.mel_mean.device

    def decoding_copy(self, device: torch.device, dtype: torch.dtype) -> MelVAE:
        """A copy of the VAE on `device` in `dtype` for decoding, made once per model and
        reused by every pipeline (every job of a multirun) that asks for the same pair."""
        cache = self.__dict__.setdefault("_decoders", {})
        key = (str(torch.device(device)), dtype)
        if key not in cache:
            cache[key] = copy.deepcopy(self.vae).to(device, dtype).eval().requires_grad_(False)
        return cache[key]


def checkpoint_record(
    vae: MelVAE,
    training: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
    summary: TrainingSummary | None = None,
) -> dict[str, Any]:
    """The dict `save_checkpoint` writes. The training record goes through JSON, so it holds
    only plain data (a str subclass or a numpy scalar would make weights-only loading refuse
    the file)."""
    training = json.loads(json.dumps(training, allow_nan=False))
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "hyperparameters": vae.hyper.to_dict(),
        "spectrogram": vae.settings.to_dict(),
        "training": training,
        "state_dict": {k: v.detach().cpu().clone() for k, v in (state_dict or vae.state_dict()).items()},
        "training_summary": summary.to_state() if summary is not None else None,
    }


def save_torch_file(obj: Any, path: Path, *, replace: bool = False) -> Path:
    """`torch.save(obj)` into `path` through sda's atomic writer (sda.files.write_atomic), its
    folder made if missing. A crash at any moment leaves the previous file or the new one, never
    half of one. Raises OutputError (one line) if `path` exists and `replace` is False."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, functools.partial(torch.save, obj), replace=replace)


def save_checkpoint(
    vae: MelVAE,
    training: dict[str, Any],
    path: Path,
    *,
    replace: bool = False,
    summary: TrainingSummary | None = None,
) -> Path:
    return save_torch_file(checkpoint_record(vae, training, summary=summary), path, replace=replace)


def resolve_checkpoint(name_or_path: str, base_dir: Path | None = None) -> Path:
    """A bare name (no '/' and no '.pt') means `base_dir/models/NAME.pt`, then the model of that
    name shipped inside the package. Anything else is a path, relative to `base_dir` (the folder a
    command was started in; by default the current folder)."""
    base = Path(base_dir) if base_dir is not None else Path()
    text = str(name_or_path)
    if "/" in text or text.endswith(".pt"):
        path = Path(text).expanduser()
        return path if path.is_absolute() else base / path
    for folder in (base / "models", PACKAGED_MODELS_DIR):
        candidate = Path(folder) / f"{text}.pt"
        if candidate.is_file():
            return candidate
    return PACKAGED_MODELS_DIR / f"{text}.pt"


def missing_checkpoint_message(name_or_path: str, base_dir: Path | None = None) -> str:
    """One line saying where `resolve_checkpoint` looked for a checkpoint it did not find, and,
    for a bare name that is a file in `base_dir` (`README.md`), how to name that file instead."""
    base = Path(base_dir) if base_dir is not None else Path()
    text = str(name_or_path)
    if "/" in text or text.endswith(".pt"):
        return f"a model name or checkpoint file ({resolve_checkpoint(text, base)} does not exist)"
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_MODELS_DIR.glob("*.pt"))) or "none"
    message = (
        f"a bare name means a model: {base.absolute() / 'models' / f'{text}.pt'} or a model shipped with sda "
        f"({shipped}), and neither exists"
    )
    if (base / text).is_file():
        message += f"; for the file {text} in {base.absolute()}, give a path: ./{text}"
    return message


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint file's structure without building a model."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"model checkpoint {str(path)!r} is not a file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{str(path)!r} is not an sda checkpoint (not a torch zip archive)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{str(path)!r} holds pickled objects that would run code to load; refused (sda loads weights only)"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise CheckpointError(f"{str(path)!r} is truncated or corrupt ({type(error).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an sda checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{str(path)!r} has an unknown checkpoint format version {version!r}")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version}, newer than this sda reads "
            f"(up to {CHECKPOINT_FORMAT_VERSION}); upgrade sda"
        )
    for key in ("hyperparameters", "spectrogram", "training", "state_dict"):
        if not isinstance(record.get(key), dict):
            raise CheckpointError(f"{str(path)!r} lacks its '{key}' section")
    if version >= 2 and "training_summary" not in record:
        raise CheckpointError(f"{str(path)!r} lacks its 'training_summary' section (format {version})")
    return record


def read_training_summary(record: dict[str, Any], latent_dim: int, path: Path) -> TrainingSummary | None:
    """The training summary of a checkpoint record (format 2), or None: format 1 had none."""
    if record["format_version"] < 2 or record["training_summary"] is None:
        return None
    try:
        return TrainingSummary.from_state(record["training_summary"], latent_dim)
    except CheckpointError as error:
        raise CheckpointError(f"{str(path)!r}: {error}") from None


def build_from_record(record: dict[str, Any], path: Path) -> MelVAE:
    """Build the VAE the record describes and load its tensors, checking every shape."""
    try:
        settings = SpectrogramSettings.from_dict(record["spectrogram"])
        hyper = ModelHyperparameters.from_dict(record["hyperparameters"])
    except (TypeError, ValueError, ConfigError) as error:
        raise CheckpointError(f"{str(path)!r} has invalid settings: {error}") from None
    vae = MelVAE(settings, hyper)
    expected = vae.state_dict()
    stored = record["state_dict"]
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{str(path)!r} does not match its own architecture: missing tensors {missing[:3]}, "
            f"unexpected tensors {unexpected[:3]}"
        )
    for key, tensor in expected.items():
        if not isinstance(stored[key], torch.Tensor) or tuple(stored[key].shape) != tuple(tensor.shape):
            got = tuple(stored[key].shape) if isinstance(stored[key], torch.Tensor) else type(stored[key]).__name__
            raise CheckpointError(
                f"{str(path)!r}: tensor '{key}' has shape {list(got) if isinstance(got, tuple) else got} "
                f"but the architecture in its header needs {list(tensor.shape)}"
            )
    vae.load_state_dict(stored)
    return vae


def load_model(
    path: str | Path = "default",
    device: str | torch.device = "cpu",
    expected_settings: SpectrogramSettings | None = None,
) -> LoadedModel:
    """Load a checkpoint for inference. `path` may be a file or a bare model name (see
    `resolve_checkpoint`). With `expected_settings`, every spectrogram setting must match.

    Raises CheckpointError (one line) for a missing file, a file that is not a checkpoint, a
    truncated file, an unknown or newer format version, or a tensor shape mismatch."""
    resolved = resolve_checkpoint(str(path))
    record = read_checkpoint(resolved)
    vae = build_from_record(record, resolved)
    if expected_settings is not None:
        differences = vae.settings.differences(expected_settings)
        if differences:
            raise CheckpointError(
                f"{str(resolved)!r} was trained with other spectrogram settings: {'; '.join(differences)}"
            )
    vae.eval().requires_grad_(False)
    vae.to(device)
    name = resolved.stem
    return LoadedModel(
        vae=vae,
        path=resolved.resolve(),
        name=name,
        sha256=file_sha256(resolved),
        training=record["training"],
        summary=read_training_summary(record, vae.hyper.latent_dim, resolved),
    )
