"""The convolutional VAE over log-mel windows, and its checkpoint format.

A window is `[n_mels, frames]` log-mel (frames = 1 + window_samples // hop), seen by the model
normalized per mel bin (mean/std of the training data, stored as buffers). `MelVAE` (format 3)
reads the mel bins as channels along time and keeps a latent frame every 2**levels spectrogram
frames; `GlobalLatentVAE` is the one-vector-per-window architecture of formats 1 and 2, still
loaded and rendered. Both take and give latents as flat vectors `[batch, latent_size]`, the
standard-normal draws the pipeline makes. Every layer's shape is fixed at construction from the
spectrogram settings and the hyperparameters; nothing is created on first forward.

Checkpoint: one file written by `torch.save` and read with `torch.load(weights_only=True)`, so
loading a stranger's checkpoint never runs code from it. It holds a dict:

    format          "sda-checkpoint"
    format_version  int (CHECKPOINT_FORMAT_VERSION; 1 and 2: GlobalLatentVAE, 3: MelVAE)
    hyperparameters ModelHyperparameters (GlobalLatentHyperparameters for 1 and 2) as a dict
    spectrogram     SpectrogramSettings as a dict (compared on load, never assumed)
    training        the training record (dataset fingerprint, epochs, losses, versions, config)
    state_dict      tensors (format 3: also the sampling prior, `prior_mean` and `prior_scale`)
    training_summary  (format 2 and later) the training windows' latents and novelty index, or
                    None (sda.training_summary); a format-1 checkpoint has none: it loads, and
                    the memorization check of its outputs is "unavailable"
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
# 3: the time-resolved MelVAE with its fitted sampling prior.
CHECKPOINT_FORMAT_VERSION = 3
# Formats 1 and 2 hold the one-vector-per-window architecture (GlobalLatentVAE); 3 the time-resolved one.
FIRST_TIME_RESOLVED_FORMAT = 3
PACKAGED_MODELS_DIR = Path(__file__).parent / "models"


@dataclass(unsafe_hash=True)
class ModelHyperparameters(Sealed):
    """Architecture of the VAE. `channels` lists the feature maps per stride-2 level in time;
    `latent_dim` is the numbers per latent frame, one latent frame per 2**len(channels)
    spectrogram frames. Also the `model` schema of `sda.train` (`model.latent_dim=...`): sealed
    (read-only) once validated."""

    KEY: ClassVar[str] = "model"
    latent_dim: int = 16
    channels: tuple[int, ...] = (128, 192, 256)
    residual_blocks: int = 1

    def validate(self) -> None:
        check_range(f"{self.KEY}.latent_dim", self.latent_dim, 1, 1024)
        channels = tuple(self.channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 4096 for c in channels):
            raise ConfigError(f"{self.KEY}.channels", list(channels), "at least one level, each in [1, 4096]")
        object.__setattr__(self, "channels", channels)
        check_range(f"{self.KEY}.residual_blocks", self.residual_blocks, 0, 8)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelHyperparameters:
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) != known:
            raise CheckpointError(f"model hyperparameters hold keys {sorted(data)}; expected {sorted(known)}")
        return cls(
            latent_dim=int(data["latent_dim"]),
            channels=tuple(data["channels"]),
            residual_blocks=int(data["residual_blocks"]),
        )


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


class Conv1d(nn.Conv1d):
    """`nn.Conv1d` (the same parameters, so the same state dict) whose stride-1 float64 pass on a
    CPU (generation's decoder: sda.pipeline.DECODE_DTYPE) is one matrix product over the kernel's
    shifted copies of the input: the same sums, while torch's float64 CPU convolution loops over
    the batch (dilated: over every row) and was the slower on a 2-core CPU (the decode stage of
    `python -m sda.bench --paths default --stereo mono`, in turns)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = self.stride == (1,) and self.groups == 1 and self.padding_mode == "zeros"
        if x.dtype != torch.float64 or x.device.type != "cpu" or not plain or isinstance(self.padding, str):
            return super().forward(x)
        (kernel,), (dilation,), (padding,) = self.kernel_size, self.dilation, self.padding
        frames = x.shape[-1] + 2 * padding - dilation * (kernel - 1)
        padded = nn.functional.pad(x, (padding, padding))
        columns = torch.cat([padded[..., k * dilation : k * dilation + frames] for k in range(kernel)], dim=1)
        weight = self.weight.permute(0, 2, 1).reshape(self.out_channels, kernel * self.in_channels)
        out = torch.matmul(weight, columns)
        return out if self.bias is None else out + self.bias[:, None]


class ResidualBlock(nn.Module):
    """x + conv(SiLU(conv(SiLU(x)))), kernel 3 along time, the second conv dilated by 3 so a
    block sees 9 frames at its level."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first = Conv1d(channels, channels, kernel_size=3, padding=1)
        self.second = Conv1d(channels, channels, kernel_size=3, padding=3, dilation=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.second(nn.functional.silu(self.first(nn.functional.silu(x))))


class _NormalizedLogMel(nn.Module):
    """What both architectures share: the per-mel-bin statistics of the training log-mels
    (buffers `mel_mean`, `mel_std`, `[n_mels, 1]`), the network working in their normalized
    space, and `decode` back to log-mels (never negative) from a subclass's `decode_normalized`."""

    n_mels: int

    def _register_mel_statistics(self) -> None:
        self.register_buffer("mel_mean", torch.zeros(self.n_mels, 1))
        self.register_buffer("mel_std", torch.ones(self.n_mels, 1))

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-mel-bin statistics `[n_mels]` of the training log-mels."""
        self.mel_mean.copy_(mean.reshape(self.n_mels, 1))
        self.mel_std.copy_(std.clamp(min=1e-3).reshape(self.n_mels, 1))

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        return (log_mel - self.mel_mean) / self.mel_std

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """`[batch, latent_size]` latents -> log-mel windows `[batch, n_mels, frames]` (never negative)."""
        return (self.decode_normalized(z) * self.mel_std + self.mel_mean).clamp(min=0.0)


class MelVAE(_NormalizedLogMel):
    """Convolutional VAE with a time-resolved latent (checkpoint format 3).

    A log-mel window `[batch, n_mels, frames]` is read as `n_mels` channels along time: each
    mel bin keeps its own weights, so the decoder can place a partial in one bin (a smeared
    partial costs most of the spectral convergence after phase reconstruction). The encoder
    halves time at each of `len(channels)` levels down to `latent_frames` latent frames of
    `latent_dim` numbers; the decoder mirrors it with transposed convolutions and residual
    blocks. Every layer's shape is fixed at construction.

    Latents cross the interface (`encode`, `decode`) flattened, `[batch, latent_size]` with
    latent_size = latent_dim * latent_frames, in the *sampling space*: standard-normal draws
    decode to sound like the training data. `fit_prior` measures the aggregate posterior (mean
    and full covariance, so latent frames of one window move together as the training audio
    does) and stores its Cholesky factor: decode(z) runs the decoder on mean + L z, and encode
    returns L^-1 (mu - mean). Until then the map is the identity."""

    def __init__(self, settings: SpectrogramSettings, hyper: ModelHyperparameters) -> None:
        super().__init__()
        self.settings = settings
        self.hyper = hyper
        levels = len(hyper.channels)
        scale = 2**levels
        self.n_mels = settings.n_mels
        self.frames = settings.window_frames
        self.padded_frames = _round_up(self.frames, scale)
        self.latent_frames = self.padded_frames // scale
        self.latent_size = hyper.latent_dim * self.latent_frames

        self._register_mel_statistics()
        self.register_buffer("prior_mean", torch.zeros(self.latent_size))
        self.register_buffer("prior_scale", torch.eye(self.latent_size))

        encoder: list[nn.Module] = []
        in_ch = self.n_mels
        for out_ch in hyper.channels:
            encoder += [nn.Conv1d(in_ch, out_ch, kernel_size=4, stride=2, padding=1), nn.SiLU()]
            in_ch = out_ch
        self.encoder = nn.Sequential(*encoder)
        self.to_moments = Conv1d(in_ch, 2 * hyper.latent_dim, kernel_size=3, padding=1)

        self.from_latent = Conv1d(hyper.latent_dim, hyper.channels[-1], kernel_size=3, padding=1)
        decoder: list[nn.Module] = []
        widths = list(hyper.channels[::-1]) + [hyper.channels[0]]
        for i in range(levels):
            # kernel 4 / stride 2: every output frame gets the same number of taps (no checkerboard)
            decoder.append(nn.ConvTranspose1d(widths[i], widths[i + 1], kernel_size=4, stride=2, padding=1))
            decoder += [ResidualBlock(widths[i + 1]) for _ in range(hyper.residual_blocks)]
            decoder.append(nn.SiLU())
        decoder.append(Conv1d(widths[-1], self.n_mels, kernel_size=3, padding=1))
        self.decoder = nn.Sequential(*decoder)

    # -- the training space: latent grids [batch, latent_dim, latent_frames] ---------------------
    def posterior(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[batch, n_mels, frames]` log-mel -> (mu, logvar), each `[batch, latent_dim, latent_frames]`."""
        x = nn.functional.pad(self.normalize(log_mel), (0, self.padded_frames - self.frames), mode="replicate")
        mu, logvar = self.to_moments(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode_grid(self, z: torch.Tensor) -> torch.Tensor:
        """`[batch, latent_dim, latent_frames]` -> normalized log-mel `[batch, n_mels, frames]`."""
        return self.decoder(nn.functional.silu(self.from_latent(z)))[..., : self.frames]

    def forward(self, log_mel: torch.Tensor, generator: torch.Generator | None = None):
        """Reparameterized pass for training: (normalized reconstruction, mu, logvar), the latents
        as grids `[batch, latent_dim, latent_frames]`."""
        mu, logvar = self.posterior(log_mel)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return self.decode_grid(mu + noise * torch.exp(0.5 * logvar)), mu, logvar

    # -- the sampling space: flat latents [batch, latent_size] -----------------------------------
    def encode(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[batch, n_mels, frames]` log-mel -> (mu, logvar) `[batch, latent_size]` in the sampling
        space (logvar: the diagonal of the whitened posterior covariance)."""
        mu, logvar = self.posterior(log_mel)
        centred = (mu.flatten(1) - self.prior_mean).unsqueeze(-1)
        white = torch.linalg.solve_triangular(self.prior_scale, centred, upper=False).squeeze(-1)
        inverse = torch.linalg.solve_triangular(self.prior_scale, torch.eye(self.latent_size).to(mu), upper=False)
        variance = logvar.flatten(1).exp() @ inverse.square().T
        return white, variance.log()

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """`[batch, latent_size]` sampling-space latents -> normalized log-mel `[batch, n_mels, frames]`."""
        grid = (self.prior_mean + z @ self.prior_scale.T).reshape(z.shape[0], self.hyper.latent_dim, self.latent_frames)
        return self.decode_grid(grid)

    def set_prior(self, mean: torch.Tensor, covariance: torch.Tensor) -> None:
        """Make standard-normal latents decode like the aggregate posterior N(mean `[latent_size]`,
        covariance `[latent_size, latent_size]`) of the training-space latents."""
        self.prior_mean.copy_(mean)
        self.prior_scale.copy_(torch.linalg.cholesky(covariance.double()))


@dataclass(frozen=True)
class GlobalLatentHyperparameters:
    """Architecture of a format 1 or 2 checkpoint (GlobalLatentVAE): as read, never trained."""

    latent_dim: int
    channels: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim, "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GlobalLatentHyperparameters:
        if set(data) != {"latent_dim", "channels"}:
            raise CheckpointError(
                f"model hyperparameters hold keys {sorted(data)}; expected ['channels', 'latent_dim']"
            )
        checked = ModelHyperparameters(latent_dim=int(data["latent_dim"]), channels=tuple(data["channels"]))
        return cls(latent_dim=checked.latent_dim, channels=checked.channels)


class GlobalLatentVAE(_NormalizedLogMel):
    """The architecture of checkpoint formats 1 and 2, kept so those models still load and
    render: one `latent_dim` vector per window, a 2-D convolutional encoder/decoder over
    (mel, time) with `len(channels)` stride-2 levels. Same interface as MelVAE for inference
    (`latent_size`, `encode`, `decode`); sda no longer trains it."""

    def __init__(self, settings: SpectrogramSettings, hyper: GlobalLatentHyperparameters) -> None:
        super().__init__()
        self.settings = settings
        self.hyper = hyper
        levels = len(hyper.channels)
        scale = 2**levels
        self.n_mels = settings.n_mels
        self.frames = settings.window_frames
        self.latent_size = hyper.latent_dim
        self.padded_mels = _round_up(self.n_mels, scale)
        self.padded_frames = _round_up(self.frames, scale)
        self.bottom_shape = (hyper.channels[-1], self.padded_mels // scale, self.padded_frames // scale)
        flat = math.prod(self.bottom_shape)

        self._register_mel_statistics()

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
            decoder.append(nn.ConvTranspose2d(chans[i], chans[i + 1], kernel_size=4, stride=2, padding=1))
            if i < levels - 1:
                decoder.append(nn.SiLU())
        self.decoder = nn.Sequential(*decoder)

    def encode(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[batch, n_mels, frames]` log-mel -> (mu, logvar), each `[batch, latent_dim]`."""
        x = nn.functional.pad(
            self.normalize(log_mel),
            (0, self.padded_frames - self.frames, 0, self.padded_mels - self.n_mels),
            mode="replicate",
        )
        h = self.encoder(x.unsqueeze(1)).flatten(1)
        return self.to_mu(h), self.to_logvar(h).clamp(-30.0, 20.0)

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).reshape(z.shape[0], *self.bottom_shape)
        return self.decoder(h)[:, 0, : self.n_mels, : self.frames]


@dataclass
class LoadedModel:
    """A VAE ready for inference with what is known about where it came from."""

    vae: MelVAE | GlobalLatentVAE
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
        """Numbers in one window's latent, the length of the vectors `decode` takes (for a
        time-resolved model, latent frames x numbers per frame)."""
        return self.vae.latent_size

    @property
    def device(self) -> torch.device:
        return self.vae.mel_mean.device

    def decoding_copy(self, device: torch.device, dtype: torch.dtype) -> MelVAE | GlobalLatentVAE:
        """A copy of the VAE on `device` in `dtype` for decoding, made once per model and
        reused by every pipeline (every job of a multirun) that asks for the same pair."""
        cache = self.__dict__.setdefault("_decoders", {})
        key = (str(torch.device(device)), dtype)
        if key not in cache:
            cache[key] = copy.deepcopy(self.vae).to(device, dtype).eval().requires_grad_(False)
        return cache[key]


def checkpoint_record(
    vae: MelVAE | GlobalLatentVAE,
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
    vae: MelVAE | GlobalLatentVAE,
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
    """The training summary of a checkpoint record (format 2 and later), or None: format 1 had none."""
    if record["format_version"] < 2 or record["training_summary"] is None:
        return None
    try:
        return TrainingSummary.from_state(record["training_summary"], latent_dim)
    except CheckpointError as error:
        raise CheckpointError(f"{str(path)!r}: {error}") from None


def build_from_record(record: dict[str, Any], path: Path) -> MelVAE | GlobalLatentVAE:
    """Build the VAE the record describes (the architecture of its format version) and load its
    tensors, checking every shape."""
    time_resolved = record["format_version"] >= FIRST_TIME_RESOLVED_FORMAT
    try:
        settings = SpectrogramSettings.from_dict(record["spectrogram"])
        if time_resolved:
            vae: MelVAE | GlobalLatentVAE = MelVAE(settings, ModelHyperparameters.from_dict(record["hyperparameters"]))
        else:
            vae = GlobalLatentVAE(settings, GlobalLatentHyperparameters.from_dict(record["hyperparameters"]))
    except (TypeError, ValueError, ConfigError) as error:
        raise CheckpointError(f"{str(path)!r} has invalid settings: {error}") from None
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
        summary=read_training_summary(record, vae.latent_size, resolved),
    )
