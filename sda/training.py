"""Training the VAE on a folder of audio: `train_model`, a plain function that `sda.train` (Hydra)
and tests call, built from a `TrainState` and short steps (prepare the data, one epoch, validate,
decide whether to stop).

Objective per window: squared error of the normalized log-mel, summed over the window, plus
beta * KL(q(z|x) || N(0, I)). KL warm-up ramps beta from 0 over `kl_warmup_epochs` so the decoder
learns to use the latents before they are pulled to the prior; free bits (a floor of `free_bits`
nats per latent dimension, on the batch-averaged KL) keep dimensions from collapsing at once.
A dimension counts as active when the variance of its posterior mean across validation windows
exceeds 0.01 (each epoch's figure); the record's final count is taken over every unaugmented
window, training and validation, as a folder of one-shots may validate on one or two windows.
Early stopping watches the validation loss (full beta) once warm-up is over.

Randomness comes from generators made from `seed`: `sampling`, always on the CPU, draws the
window order and the augmentation (so an epoch's windows are the same on any device), and
`noise`, on the training device, draws the reparameterization noise (on the CPU the two are one
generator; see `make_generators`). Parameter initialization
draws from torch's global generator, seeded with `seed` inside `fork_rng` (torch's layers take
no generator), which leaves the caller's global state as it was. On CUDA, cuDNN is held to its
deterministic kernels while training. So a seed gives the same weights run after run on one kind
of device (a CPU run and a GPU run differ: other kernels, another noise stream), and as both
generators are part of the training state saved every `checkpoint_every` epochs, `resume=true`
continues to exactly the weights an uninterrupted run reaches.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import pickle
import platform
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sda.config import PhaseConfig, TrainConfig, resolve_device
from sda.data.corpus import ensure_demo_corpus
from sda.data.folder import AudioClip, LoadedDataset, load_audio_folder, printable
from sda.data.windows import Augmentation, WindowSampler, silence_reason, split_by_file
from sda.dsp.phase import mel_pseudo_inverse
from sda.dsp.spectrogram import SpectrogramSettings, decompress, log_mel
from sda.errors import DatasetError, SdaError
from sda.model import MelVAE, read_checkpoint, save_checkpoint, save_torch_file
from sda.training_record import DatasetRecord, EpochRecord, MachineRecord, TrainingRecord
from sda.training_summary import TrainingSummary, render_latents
from sda.versions import versions

log = logging.getLogger(__name__)

STATE_FORMAT = "sda-train-state"
STATE_FORMAT_VERSION = 3  # 3: the time-resolved MelVAE (checkpoint format 3)
ACTIVE_DIM_VARIANCE = 0.01
PRIOR_HOP_FRACTION = 0.125  # windows for the sampling prior, this fraction of a window apart
PRIOR_SHRINKAGE = 0.1
# Decoded log1p-mel magnitudes above this are clipped before `decompress` in the spectral figures: a
# full-scale sine gives about 6.2, and an unstable decoder's outputs (a corpus whose validation
# windows lie far outside the training statistics) would otherwise overflow float32 to inf, which
# the training record (JSON) cannot hold and which would poison the spectral loss's gradients.
LOG_MEL_CEILING = 12.0
# Settings a resumed run may change: how long and where it runs, not what it learns. The device
# itself is compared by type (a generator's state belongs to one kind of device).
RESUMABLE_KEYS = frozenset({"resume", "max_epochs", "max_minutes", "threads", "overwrite", "device"})


@dataclass(frozen=True)
class TrainingResult:
    model_path: Path
    record: TrainingRecord

    def summary(self) -> str:
        return self.record.summary(self.model_path)


# ---------------------------------------------------------------------------------------------
# Where things go


@dataclass(frozen=True)
class TrainingPaths:
    """The final model file and the folder of the resumable training state."""

    model: Path
    state_dir: Path

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.pt"

    @classmethod
    def for_config(cls, cfg: TrainConfig, base_dir: Path) -> TrainingPaths:
        """`models_dir/NAME.pt` and `models_dir/NAME.train/`; a relative models_dir is under base_dir."""
        models_dir = Path(cfg.models_dir)
        if not models_dir.is_absolute():
            models_dir = base_dir / models_dir
        return cls(model=models_dir / f"{cfg.name}.pt", state_dir=models_dir / f"{cfg.name}.train")

    def check_can_start(self, cfg: TrainConfig) -> None:
        """Refuse (one line) to overwrite a model, to resume nothing, or to start over silently."""
        if self.model.exists() and not cfg.overwrite:
            raise SdaError(
                f"name={cfg.name!r}: {self.model} already exists; choose another name or pass overwrite=true"
            )
        if cfg.resume and not self.state_file.exists():
            raise SdaError(f"resume=true: no interrupted run to continue ({self.state_file} does not exist)")
        if not cfg.resume and self.state_file.exists():
            raise SdaError(
                f"name={cfg.name!r}: an interrupted run exists in {self.state_dir}; continue it with resume=true "
                "or delete that folder"
            )


def dataset_root(cfg: TrainConfig, base_dir: Path) -> Path:
    root = Path(cfg.dataset.path).expanduser()
    return root if root.is_absolute() else base_dir / root


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class WindowSource:
    """Where a sampler's windows came from: how many from how many files, how many of those files
    are shorter than a window (one padded window each), and the files that gave none, with why."""

    windows: int
    files: int
    short_files: int
    silent: list[tuple[AudioClip, str]]

    @classmethod
    def of(cls, sampler: WindowSampler, clips: list[AudioClip]) -> WindowSource:
        """What `sampler`, made from `clips`, found in them."""
        window = sampler.window_samples
        used = [clip for clip, n in zip(clips, sampler.windows_per_clip, strict=True) if n > 0]
        silent = [
            (clip, silence_reason(clip.audio, window, sampler.hop_samples, sampler.silence_dbfs, sampler.sample_rate))
            for clip, n in zip(clips, sampler.windows_per_clip, strict=True)
            if n == 0
        ]
        short = sum(1 for clip in used if clip.audio.shape[0] < window)
        return cls(windows=len(sampler), files=len(used), short_files=short, silent=silent)

    def text(self) -> str:
        short = f" ({self.short_files} shorter than a window: each placed at its start and padded)"
        return f"{self.windows} windows from {self.files} files" + (short if self.short_files else "")


@dataclass
class TrainingData:
    """What a run trains and validates on, prepared once per run (and again, identically, on resume)."""

    root: Path
    dataset: LoadedDataset
    train_clips: list[AudioClip]
    validation_clips: list[AudioClip]
    hop_samples: int
    train_sampler: WindowSampler
    validation_log_mels: torch.Tensor  # [windows, n_mels, frames] on the training device
    independent_validation: bool
    train_source: WindowSource
    validation_source: WindowSource  # the training windows' when validation is not independent

    @property
    def short_files(self) -> int:
        """Files shorter than a window (one padded window each) among those trained or validated on."""
        validation = self.validation_source.short_files if self.independent_validation else 0
        return self.train_source.short_files + validation

    @property
    def silent_files(self) -> list[tuple[AudioClip, str]]:
        """Files read but giving no window, each with why (once, though a split clip is two)."""
        found: dict[Path, tuple[AudioClip, str]] = {}
        for clip, reason in [*self.train_source.silent, *self.validation_source.silent]:
            found.setdefault(clip.path, (clip, reason))
        return list(found.values())


def prepare_data(cfg: TrainConfig, root: Path, device: torch.device) -> TrainingData:
    """Load the folder (writing the demo corpus first when asked), split it by file, and build the
    training sampler and the fixed validation log-mels. Logs how many windows came from how many
    files, and names every file that gives none. Raises DatasetError when nothing is usable."""
    settings, data_cfg = cfg.spectrogram, cfg.dataset
    if data_cfg.synthesize_demo:
        ensure_demo_corpus(root, seed=data_cfg.demo_seed)
    dataset = load_audio_folder(root, sample_rate=settings.sample_rate)  # warns per skipped file
    train_clips, validation_clips = split_by_file(
        list(dataset.clips), data_cfg.validation_fraction, cfg.seed, settings.sample_rate
    )
    hop_samples = max(1, round(settings.window_samples * data_cfg.hop_fraction))
    train_sampler = _sampler(train_clips, cfg, hop_samples, cfg.augmentation)
    validation_sampler = _sampler(validation_clips, cfg, hop_samples, Augmentation.none())
    train_source = WindowSource.of(train_sampler, train_clips)
    validation_source = WindowSource.of(validation_sampler, validation_clips)
    for clip, reason in [*train_source.silent, *validation_source.silent]:
        log.warning("skipping %s: %s", printable(clip.path), reason)
    if len(train_sampler) == 0:
        raise DatasetError(
            f"dataset.path={printable(root)!r}: no usable {settings.window_s:g} s window "
            f"above {data_cfg.silence_dbfs:g} dBFS "
            f"in {dataset.fingerprint.total_seconds:.2f} s of audio; need at least one window of sound"
        )
    log.info("training on %s", train_source.text())
    independent = len(validation_sampler) > 0
    if independent:
        validation_windows = validation_sampler.fixed_windows()
        log.info("validating on %s", validation_source.text())
    else:
        log.warning("the validation files hold no usable window; validating on training windows (not independent)")
        validation_windows = train_sampler.fixed_windows()  # unaugmented, whatever the sampler's augmentation
        validation_source = dataclasses.replace(train_source, silent=validation_source.silent)
    return TrainingData(
        root=root,
        dataset=dataset,
        train_clips=train_clips,
        validation_clips=validation_clips,
        hop_samples=hop_samples,
        train_sampler=train_sampler,
        validation_log_mels=windows_to_log_mel(validation_windows, settings, device),
        independent_validation=independent,
        train_source=train_source,
        validation_source=validation_source,
    )


def _sampler(clips: list[AudioClip], cfg: TrainConfig, hop_samples: int, augmentation: Augmentation) -> WindowSampler:
    settings = cfg.spectrogram
    return WindowSampler(
        clips, settings.window_samples, hop_samples, cfg.dataset.silence_dbfs, augmentation, settings.sample_rate
    )


@torch.no_grad()
def windows_to_log_mel(
    windows: torch.Tensor, settings: SpectrogramSettings, device: torch.device, batch: int = 64
) -> torch.Tensor:
    """`[N, window_samples]` audio -> `[N, n_mels, frames]` log-mels on `device`."""
    parts = [log_mel(windows[i : i + batch].to(device), settings) for i in range(0, windows.shape[0], batch)]
    if not parts:
        return torch.empty(0, settings.n_mels, settings.window_frames, device=device)
    return torch.cat(parts)


@torch.no_grad()
def mel_statistics(
    sampler: WindowSampler, settings: SpectrogramSettings, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mel-bin mean and standard deviation `[n_mels]` over every frame of the sampler's
    unaugmented windows, streamed in batches (a large dataset never sits in memory as log-mels)."""
    total = torch.zeros(settings.n_mels, dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    count = 0
    for batch in sampler.fixed_batches(64):
        frames = log_mel(batch.to(device), settings).double()  # [B, n_mels, T]
        total += frames.sum(dim=(0, 2))
        squares += frames.pow(2).sum(dim=(0, 2))
        count += frames.shape[0] * frames.shape[2]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp(min=0).sqrt()
    return mean.float(), std.float()


# ---------------------------------------------------------------------------------------------
# The state of a run, and the resume format


@dataclass(frozen=True)
class RunKey:
    """What a resumed run must share with the interrupted one, besides its data (compared by
    content hash once the data is read): every setting but the RESUMABLE_KEYS, flattened to
    dotted keys, and the device type."""

    config: dict[str, Any]
    device_type: str

    @classmethod
    def of(cls, cfg: TrainConfig, device: torch.device) -> RunKey:
        settings = {k: v for k, v in _dotted(cfg.to_dict()) if k.split(".")[0] not in RESUMABLE_KEYS}
        return cls(config=settings, device_type=device.type)

    def check_same_as(self, stored: RunKey, path: Path) -> None:
        """Raise a one-line SdaError naming the first difference from the interrupted run's key."""
        for key in sorted(set(self.config) | set(stored.config)):
            if self.config.get(key) != stored.config.get(key):
                raise SdaError(
                    f"resume=true: {key}={self.config.get(key)!r} differs from the interrupted run's "
                    f"{stored.config.get(key)!r}; resume with the same settings or start a new name"
                )
        if self.device_type != stored.device_type:
            raise SdaError(
                f"resume=true: the interrupted run trained on {stored.device_type} ({path}); this one would run on "
                f"{self.device_type}; resume with device={stored.device_type}"
            )


def _dotted(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@dataclass
class BestWeights:
    """The lowest validation loss after warm-up, its epoch and the weights (CPU copies) it had."""

    loss: float = math.inf
    epoch: int = 0
    state_dict: dict[str, torch.Tensor] | None = None


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped. `save` and `load` are the one
    definition of the resume format (a dict of plain data and tensors, read weights-only)."""

    key: RunKey
    model: MelVAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    sampling: torch.Generator  # CPU: window order and augmentation
    noise: torch.Generator  # the training device: reparameterization noise
    dataset_hash: str = ""  # the training data's content hash, once `use_data` has seen it
    history: list[EpochRecord] = field(default_factory=list)
    best: BestWeights = field(default_factory=BestWeights)
    epoch: int = 0  # the last finished epoch
    windows_seen: int = 0
    elapsed_s: float = 0.0  # wall time over every session of the run
    stale_epochs: int = 0  # epochs after warm-up without a new best

    @classmethod
    def start(cls, cfg: TrainConfig, device: torch.device) -> TrainState:
        """A fresh run: initial weights from `seed`; the normalization waits for `use_data`."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = MelVAE(cfg.spectrogram, cfg.model).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(2, cfg.patience // 4)
        )
        sampling, noise = make_generators(cfg.seed, device)
        return cls(RunKey.of(cfg, device), model, optimizer, scheduler, sampling, noise)

    def use_data(self, data: TrainingData, cfg: TrainConfig) -> None:
        """A fresh run takes its normalization (per-mel-bin statistics) from the training windows;
        a resumed one checks that the data is the interrupted run's."""
        content_hash = data.dataset.fingerprint.content_hash
        if self.dataset_hash:
            if self.dataset_hash != content_hash:
                raise SdaError(
                    "resume=true: the dataset changed since the interrupted run (content hash differs); "
                    "start a new name"
                )
            return
        device = self.model.mel_mean.device
        statistics = mel_statistics(data.train_sampler, cfg.spectrogram, device)
        self.model.set_normalization(*statistics)
        self.dataset_hash = content_hash

    def save(self, path: Path) -> None:
        """Write the state atomically (a crash leaves the previous state or this one)."""
        save_torch_file(
            {
                "format": STATE_FORMAT,
                "format_version": STATE_FORMAT_VERSION,
                "key": {"config": self.key.config, "device_type": self.key.device_type},
                "dataset_hash": self.dataset_hash,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "generators": {"sampling": self.sampling.get_state(), "noise": self.noise.get_state()},
                "history": [dataclasses.asdict(row) for row in self.history],
                "best": {"loss": self.best.loss, "epoch": self.best.epoch, "state_dict": self.best.state_dict},
                "epoch": self.epoch,
                "windows_seen": self.windows_seen,
                "elapsed_s": self.elapsed_s,
                "stale_epochs": self.stale_epochs,
            },
            path,
            replace=True,
        )

    def load(self, path: Path) -> None:
        """Continue from a saved state: check it belongs to this run (settings, device; the data is
        checked by `use_data`), then take every part of it. Raises a one-line SdaError for an
        unreadable file, another format or another run."""
        stored = _read_state(path)
        self.key.check_same_as(RunKey(**stored["key"]), path)
        self.model.load_state_dict(stored["model"])
        self.optimizer.load_state_dict(stored["optimizer"])
        self.scheduler.load_state_dict(stored["scheduler"])
        self.sampling.set_state(stored["generators"]["sampling"])
        self.noise.set_state(stored["generators"]["noise"])
        self.dataset_hash = str(stored["dataset_hash"])
        self.history = [EpochRecord(**row) for row in stored["history"]]
        self.best = BestWeights(**stored["best"])
        self.epoch = int(stored["epoch"])
        self.windows_seen = int(stored["windows_seen"])
        self.elapsed_s = float(stored["elapsed_s"])
        self.stale_epochs = int(stored["stale_epochs"])


def _read_state(path: Path) -> dict[str, Any]:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SdaError(f"resume=true: {path} holds objects that would run code to load; refused") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise SdaError(
            f"resume=true: {path} is truncated or corrupt ({type(error).__name__}); delete {path.parent} to start over"
        ) from None
    found = stored.get("format_version") if isinstance(stored, dict) else None
    if not isinstance(stored, dict) or stored.get("format", STATE_FORMAT) != STATE_FORMAT:
        raise SdaError(f"resume=true: {path} is not an sda training state")
    if found != STATE_FORMAT_VERSION:
        raise SdaError(
            f"resume=true: {path} is training state format {found!r}, written by "
            f"{'an older' if isinstance(found, int) and found < STATE_FORMAT_VERSION else 'another'} sda; "
            f"this sda continues format {STATE_FORMAT_VERSION} only: delete {path.parent} and start the run again"
        )
    return stored


def make_generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(sampling, noise) generators from `seed`. On the CPU they are one generator, drawing both
    in turn as sda always has, so a CPU run reproduces the same weights from one version to the
    next (the shipped model's among them). On a GPU the noise generator lives there (Philox,
    seeded with `seed`: a stream unrelated to the CPU's Mersenne Twister)."""
    sampling = torch.Generator().manual_seed(seed)
    if device.type == "cpu":
        return sampling, sampling
    return sampling, torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# One epoch, validation, stopping


def _loss_terms(
    model: MelVAE, log_mels: torch.Tensor, generator: torch.Generator | None, sample: bool, spectral_weight: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction per window [B], KL per latent number [B, D * F], mu [B, D, F], spectral
    convergence [B]); D numbers per latent frame, F latent frames.

    The reconstruction is the squared error of the normalized log-mel plus `spectral_weight`
    times the spectral convergence of the linear magnitude the phase stage will start from
    (the pseudo-inverse of the mel projection, as `sda.dsp.phase.inverse_mel`), against the
    same of the true log-mel. The log error alone weights quiet bins like loud ones, lets the
    level sag (a log-domain mean under-shoots the energy) and ignores that the pseudo-inverse
    amplifies errors in the narrow low-frequency mel bands many times over: what spectral
    convergence after phase reconstruction (and the ear) notices most. The returned spectral
    convergence is of the mel magnitudes. With `sample`, latents are drawn with `generator`,
    which must be on the model's device."""
    if sample:
        recon, mu, logvar = model(log_mels, generator=generator)
    else:
        mu, logvar = model.posterior(log_mels)
        recon = model.decode_grid(mu)
    target = model.normalize(log_mels)
    reconstruction = (recon - target).pow(2).flatten(1).sum(dim=1)
    decoded_mel = decompress((recon * model.mel_std + model.mel_mean).clamp(max=LOG_MEL_CEILING))
    target_mel = decompress(log_mels)
    convergence = (decoded_mel - target_mel).flatten(1).norm(dim=1) / target_mel.flatten(1).norm(dim=1).clamp(min=1e-6)
    if spectral_weight:
        inverse = mel_pseudo_inverse(model.settings, str(log_mels.device))  # [n_freqs, n_mels]
        decoded_linear = torch.matmul(inverse, decoded_mel).clamp(min=0.0)
        target_linear = torch.matmul(inverse, target_mel).clamp(min=0.0)
        error = (decoded_linear - target_linear).flatten(1).norm(dim=1)
        reconstruction = reconstruction + spectral_weight * error / target_linear.flatten(1).norm(dim=1).clamp(min=1e-6)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return reconstruction, kl.flatten(1), mu, convergence.detach()


def beta_at(epoch: int, cfg: TrainConfig) -> float:
    """The KL weight of an epoch: ramped from 0 to `beta` over the warm-up."""
    return cfg.beta * min(1.0, epoch / cfg.kl_warmup_epochs) if cfg.kl_warmup_epochs else cfg.beta


def train_epoch(state: TrainState, data: TrainingData, cfg: TrainConfig, beta: float) -> tuple[float, int]:
    """One pass over the training windows: (mean loss per window, windows). The loss is summed on
    the device and read once at the end, so the GPU is never made to wait within an epoch."""
    model, settings = state.model, cfg.spectrogram
    device = model.mel_mean.device
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for batch in data.train_sampler.epoch(state.sampling, cfg.batch_size):
        log_mels = log_mel(batch.to(device), settings)
        reconstruction, kl, _, _ = _loss_terms(model, log_mels, state.noise, True, cfg.spectral_weight)
        kl_floor = kl.mean(dim=0).clamp(min=cfg.free_bits).sum()
        loss = reconstruction.mean() + beta * kl_floor
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        state.optimizer.step()
        total += (reconstruction.detach().sum() + beta * kl.detach().sum()).double()
        count += batch.shape[0]
    return total.item() / max(count, 1), count


@dataclass(frozen=True)
class ValidationFigures:
    """Means per window over the validation windows (posterior means, no noise)."""

    reconstruction: float
    kl: float
    loss: float  # reconstruction + beta * kl
    active_dims: int
    mel_spectral_convergence: float


@torch.no_grad()
def validate(
    model: MelVAE, log_mels: torch.Tensor, beta: float, spectral_weight: float = 0.0, batch_size: int = 64
) -> ValidationFigures:
    """Validation figures on fixed log-mel windows `[N, n_mels, frames]`."""
    model.eval()
    recon_sum, kl_sum, sc_sum, mus = 0.0, 0.0, 0.0, []
    for start in range(0, log_mels.shape[0], batch_size):
        reconstruction, kl, mu, convergence = _loss_terms(
            model, log_mels[start : start + batch_size], None, False, spectral_weight
        )
        recon_sum += reconstruction.sum().item()
        kl_sum += kl.sum().item()
        sc_sum += convergence.sum().item()
        mus.append(mu)
    n = log_mels.shape[0]
    per_dim = torch.cat(mus).transpose(1, 2).flatten(0, 1)  # [windows * latent frames, D]
    active = int((per_dim.var(dim=0, unbiased=False) > ACTIVE_DIM_VARIANCE).sum().item()) if n > 1 else 0
    recon, kl = recon_sum / n, kl_sum / n
    return ValidationFigures(recon, kl, recon + beta * kl, active, sc_sum / n)


@torch.no_grad()
def active_dimensions(model: MelVAE, data: TrainingData, cfg: TrainConfig) -> int:
    """Latent dimensions (numbers per latent frame) whose posterior mean varies (variance >
    ACTIVE_DIM_VARIANCE) across every unaugmented training window and the validation windows,
    streamed in batches."""
    model.eval()
    device = model.mel_mean.device
    batches = (log_mel(batch.to(device), cfg.spectrogram) for batch in data.train_sampler.fixed_batches(64))
    validation = data.validation_log_mels.split(64) if data.independent_validation else ()
    total = torch.zeros(model.hyper.latent_dim, dtype=torch.float64, device=device)
    squares, count = torch.zeros_like(total), 0
    for log_mels in itertools.chain(batches, validation):
        # [windows, D, latent frames] -> one row per latent frame: D numbers, each a dimension
        mu = model.posterior(log_mels)[0].transpose(1, 2).flatten(0, 1).double()
        total += mu.sum(dim=0)
        squares += mu.pow(2).sum(dim=0)
        count += mu.shape[0]
    if count < 2:
        return 0
    variance = squares / count - (total / count).pow(2)
    return int((variance > ACTIVE_DIM_VARIANCE).sum().item())


@torch.no_grad()
def fit_prior(
    model: MelVAE, clips: list[AudioClip], settings: SpectrogramSettings, silence_dbfs: float, device: torch.device
) -> int:
    """Fit the model's sampling prior (`MelVAE.set_prior`) to its aggregate posterior over the
    training clips' windows, taken PRIOR_HOP_FRACTION of a window apart: the mean and covariance
    of the posterior means plus the mean posterior variance, shrunk by PRIOR_SHRINKAGE towards
    its diagonal (a few hundred windows estimate a covariance of a few hundred numbers poorly).
    Returns the number of windows."""
    hop = max(1, round(settings.window_samples * PRIOR_HOP_FRACTION))
    sampler = WindowSampler(clips, settings.window_samples, hop, silence_dbfs, Augmentation.none())
    model.eval()
    means, variances = [], []
    for batch in sampler.fixed_batches(64):
        mu, logvar = model.posterior(log_mel(batch.to(device), settings))
        means.append(mu.flatten(1).double())
        variances.append(logvar.flatten(1).double().exp())
    if not means:
        return 0
    mu, variance = torch.cat(means), torch.cat(variances)
    spread = torch.cov(mu.T) if mu.shape[0] > 1 else torch.zeros(mu.shape[1], mu.shape[1]).to(mu)
    covariance = spread + torch.diag(variance.mean(dim=0))
    covariance = (1.0 - PRIOR_SHRINKAGE) * covariance + PRIOR_SHRINKAGE * torch.diag(covariance.diagonal())
    model.set_prior(mu.mean(dim=0), covariance)
    return int(mu.shape[0])


def end_epoch(state: TrainState, row: EpochRecord, cfg: TrainConfig) -> None:
    """Record an epoch; after warm-up, step the learning-rate schedule and keep the best weights
    (an improvement beats the best by more than `min_delta`)."""
    state.history.append(row)
    state.epoch = row.epoch
    if row.epoch < cfg.kl_warmup_epochs:
        return
    state.scheduler.step(row.validation_loss)
    if row.validation_loss < state.best.loss - cfg.min_delta:
        weights = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
        state.best = BestWeights(row.validation_loss, row.epoch, weights)
        state.stale_epochs = 0
    else:
        state.stale_epochs += 1


def stop_reason(state: TrainState, cfg: TrainConfig) -> str | None:
    """Why training stops after the last finished epoch, or None to go on."""
    if state.epoch >= cfg.kl_warmup_epochs and state.stale_epochs >= cfg.patience:
        return f"early stopping: no validation improvement for {cfg.patience} epochs"
    if state.elapsed_s / 60.0 >= cfg.max_minutes:
        return f"time budget of {cfg.max_minutes:g} minutes"
    if state.epoch >= cfg.max_epochs:
        return "max_epochs"
    return None


@contextmanager
def deterministic_kernels(device: torch.device) -> Iterator[None]:
    """On CUDA, cuDNN's deterministic kernels (some of its fastest backward convolutions add
    partial sums in a varying order) for the duration; its settings are restored afterwards."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = before


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class _Session:
    """This process's share of a run: its start and its training throughput."""

    started: float
    elapsed_before_s: float
    train_seconds: float = 0.0
    windows: int = 0

    @property
    def windows_per_second(self) -> float:
        return self.windows / self.train_seconds if self.train_seconds > 0 else 0.0


def train_model(
    cfg: TrainConfig,
    base_dir: Path | None = None,
    command: str = "",
    on_epoch: Callable[[EpochRecord], None] | None = None,
    show_progress: bool | None = None,
) -> TrainingResult:
    """Train per `cfg`; write `models_dir/NAME.pt` atomically and return its path and record.

    Relative paths (dataset.path, models_dir) are taken from `base_dir` (default: the current
    folder). Raises SdaError subclasses (one line each) for unusable input; a failed run never
    leaves a model file where a good one is expected."""
    started = time.perf_counter()
    base_dir = Path(base_dir or Path.cwd())
    paths = TrainingPaths.for_config(cfg, base_dir)
    paths.check_can_start(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = TrainState.start(cfg, device)
    if cfg.resume:  # before the data is read: a state that cannot continue fails at once
        state.load(paths.state_file)
    data = prepare_data(cfg, dataset_root(cfg, base_dir), device)
    state.use_data(data, cfg)
    if cfg.resume:
        log.info("resuming %s from epoch %d on %s", cfg.name, state.epoch + 1, device)
    else:
        log.info("training %s on %s", cfg.name, device)
    session = _Session(started=started, elapsed_before_s=state.elapsed_s)
    with deterministic_kernels(device):
        stopped_because = _run_epochs(state, data, cfg, paths, session, on_epoch, show_progress)
        record = _finish(state, data, cfg, session, stopped_because, command, device)
    summary = summarize_training_windows(state.model, data, cfg, device)
    save_checkpoint(state.model, record.to_dict(), paths.model, replace=cfg.overwrite, summary=summary)
    read_checkpoint(paths.model)  # what we wrote must load
    shutil.rmtree(paths.state_dir, ignore_errors=True)
    return TrainingResult(model_path=paths.model, record=record)


def summarize_training_windows(
    model: MelVAE, data: TrainingData, cfg: TrainConfig, device: torch.device
) -> TrainingSummary:
    """The checkpoint's training summary (sda.training_summary) from the final weights; windows
    are rendered with the generation defaults of phase reconstruction."""
    model.eval()
    phase = PhaseConfig()
    return TrainingSummary.build(
        lambda log_mels: model.encode(log_mels)[0],
        lambda latents: render_latents(
            model.decode,
            latents.to(device),
            cfg.spectrogram,
            phase.inverse_mel.value,
            phase.iterations,
            phase.momentum,
            phase.init.value,
        ),
        [(printable(clip.path), clip.audio) for clip in data.train_clips],
        cfg.spectrogram,
        data.hop_samples,
        cfg.dataset.silence_dbfs,
        device,
    )


def _run_epochs(
    state: TrainState,
    data: TrainingData,
    cfg: TrainConfig,
    paths: TrainingPaths,
    session: _Session,
    on_epoch: Callable[[EpochRecord], None] | None,
    show_progress: bool | None,
) -> str:
    """Epochs until a stop reason; the state is saved every `checkpoint_every` epochs and at the last."""
    progress = tqdm(
        initial=state.epoch,
        total=cfg.max_epochs,
        desc=f"train {cfg.name}",
        unit="epoch",
        disable=(not sys.stderr.isatty()) if show_progress is None else not show_progress,
        dynamic_ncols=True,
    )
    reason = stop_reason(state, cfg)
    while reason is None:
        epoch = state.epoch + 1
        beta = beta_at(epoch, cfg)
        epoch_start = time.perf_counter()
        train_loss, windows = train_epoch(state, data, cfg, beta)
        session.train_seconds += time.perf_counter() - epoch_start
        session.windows += windows
        figures = validate(state.model, data.validation_log_mels, cfg.beta, cfg.spectral_weight)
        row = EpochRecord(
            epoch=epoch,
            beta=beta,
            train_loss=train_loss,
            validation_loss=figures.loss,
            validation_reconstruction=figures.reconstruction,
            validation_kl=figures.kl,
            validation_mel_spectral_convergence=figures.mel_spectral_convergence,
            active_dims=figures.active_dims,
        )
        end_epoch(state, row, cfg)
        state.windows_seen += windows
        state.elapsed_s = session.elapsed_before_s + time.perf_counter() - session.started
        progress.update(1)
        progress.set_postfix(
            train=f"{train_loss:.0f}", val=f"{figures.loss:.0f}", kl=f"{figures.kl:.1f}", active=figures.active_dims
        )
        if on_epoch:
            on_epoch(row)
        if epoch % cfg.checkpoint_every == 0:
            log.info(
                "epoch %d: train %.1f, validation %.1f (reconstruction %.1f, KL %.1f), "
                "%d/%d dims active, beta %.2f, %.0f s, %.0f windows/s",
                epoch,
                train_loss,
                figures.loss,
                figures.reconstruction,
                figures.kl,
                figures.active_dims,
                cfg.model.latent_dim,
                beta,
                state.elapsed_s,
                session.windows_per_second,
            )
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.max_epochs:
            state.save(paths.state_file)
        reason = stop_reason(state, cfg)
    progress.close()
    return reason


def _finish(
    state: TrainState,
    data: TrainingData,
    cfg: TrainConfig,
    session: _Session,
    stopped_because: str,
    command: str,
    device: torch.device,
) -> TrainingRecord:
    """Put the best weights into the model (the last ones when training stopped before warm-up
    ended) and describe the run."""
    last = state.history[-1]
    if state.best.state_dict is not None:
        state.model.load_state_dict(state.best.state_dict)
        best_loss, best_epoch = state.best.loss, state.best.epoch
    else:
        best_loss, best_epoch = last.validation_loss, last.epoch
    prior_windows = fit_prior(state.model, data.train_clips, cfg.spectrogram, cfg.dataset.silence_dbfs, device)
    final = validate(state.model, data.validation_log_mels, cfg.beta, cfg.spectral_weight)
    fingerprint = data.dataset.fingerprint
    return TrainingRecord(
        dataset=DatasetRecord(
            file_count=fingerprint.file_count,
            total_seconds=fingerprint.total_seconds,
            content_hash=fingerprint.content_hash,
            path=printable(data.root),
            skipped=[
                *({"path": printable(s.path), "reason": s.reason} for s in data.dataset.skipped),
                *({"path": printable(clip.path), "reason": reason} for clip, reason in data.silent_files),
            ],
            train_files=len(data.train_clips),
            validation_files=len(data.validation_clips),
            train_windows=len(data.train_sampler),
            validation_windows=int(data.validation_log_mels.shape[0]),
            train_window_files=data.train_source.files,
            validation_window_files=data.validation_source.files,
            short_files=data.short_files,
            independent_validation=data.independent_validation,
        ),
        epochs=last.epoch,
        best_epoch=best_epoch,
        stopped_because=stopped_because,
        final_train_loss=last.train_loss,
        final_validation_loss=final.loss,
        best_validation_loss=best_loss,
        validation_reconstruction=final.reconstruction,
        validation_kl=final.kl,
        validation_mel_spectral_convergence=final.mel_spectral_convergence,
        active_latent_dims=active_dimensions(state.model, data, cfg),
        prior_windows=prior_windows,
        latent_dim=cfg.model.latent_dim,
        wall_time_s=session.elapsed_before_s + time.perf_counter() - session.started,
        windows_seen=state.windows_seen,
        windows_per_second=session.windows_per_second,
        augmentation=cfg.augmentation.to_dict(),
        config=cfg.to_dict(),
        command=command,
        machine=MachineRecord(
            platform=platform.platform(),
            processor=platform.machine(),
            threads=torch.get_num_threads(),
            device=str(device),
        ),
        versions=versions(),
        history=list(state.history),
    )
