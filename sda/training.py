"""Training the VAE on a folder of audio: a plain function that `sda.train` (Hydra) and tests call.

Objective per window: squared error of the normalised log-mel, summed over the window, plus
beta * KL(q(z|x) || N(0, I)). KL warm-up ramps beta from 0 over `kl_warmup_epochs` so the decoder
learns to use the latents before they are pulled to the prior; free bits (a floor of `free_bits`
nats per latent dimension, on the batch-averaged KL) keep dimensions from collapsing at once.
A dimension counts as active when the variance of its posterior mean across validation windows
exceeds 0.01. Early stopping watches the validation loss (full beta) once warm-up is over.

Everything random comes from one torch.Generator seeded from `seed` (window order, augmentation,
reparameterisation noise), so training is deterministic on the CPU, and the generator's state is
saved with each periodic checkpoint, so `resume=true` continues exactly where the run stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sda.config import TrainConfig, resolve_device
from sda.data.corpus import ensure_demo_corpus
from sda.data.folder import LoadedDataset, load_audio_folder
from sda.data.windows import Augmentation, WindowSampler, split_by_file
from sda.dsp.spectrogram import SpectrogramSettings, log_mel
from sda.errors import DatasetError, SdaError
from sda.model import MelVAE, ModelHyperparameters, checkpoint_record, read_checkpoint, save_torch_file
from sda.versions import versions

log = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
ACTIVE_DIM_VARIANCE = 0.01


@dataclass
class TrainingResult:
    model_path: Path
    record: dict[str, Any]

    def summary(self) -> str:
        r = self.record
        return (
            f"saved {self.model_path} | {r['dataset']['file_count']} files, {r['dataset']['total_seconds']:.1f} s | "
            f"{r['epochs']} epochs ({r['stopped_because']}) | train loss {r['final_train_loss']:.1f}, "
            f"validation loss {r['final_validation_loss']:.1f} "
            f"(best {r['best_validation_loss']:.1f} at epoch {r['best_epoch']}) | "
            f"{r['active_latent_dims']}/{r['latent_dim']} latent dims active | "
            f"{r['wall_time_s']:.0f} s, {r['windows_per_second']:.0f} windows/s"
        )


def spectrogram_settings(cfg: TrainConfig) -> SpectrogramSettings:
    s = cfg.spectrogram
    return SpectrogramSettings(
        sample_rate=s.sample_rate,
        n_fft=s.n_fft,
        hop_length=s.hop_length,
        n_mels=s.n_mels,
        f_max=s.sample_rate / 2,
        window_s=s.window_s,
    )


def model_paths(cfg: TrainConfig, base_dir: Path) -> tuple[Path, Path]:
    """(final model file, folder of training state) for a config, relative paths under base_dir."""
    models_dir = Path(cfg.models_dir)
    if not models_dir.is_absolute():
        models_dir = base_dir / models_dir
    return models_dir / f"{cfg.name}.pt", models_dir / f"{cfg.name}.train"


def dataset_root(cfg: TrainConfig, base_dir: Path) -> Path:
    root = Path(cfg.dataset.path).expanduser()
    return root if root.is_absolute() else base_dir / root


def _augmentation(cfg: TrainConfig) -> Augmentation:
    a = cfg.augmentation
    if not a.enabled:
        return Augmentation.none()
    return Augmentation(
        jitter=a.jitter, gain_db=a.gain_db, semitone_steps=tuple(a.semitone_steps), p_varispeed=a.p_varispeed
    )


def _loss_terms(
    model: MelVAE, log_mels: torch.Tensor, generator: torch.Generator | None, sample: bool, spectral_weight: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction per window [B], KL per dimension [B, D], mu [B, D], spectral convergence [B]).

    The reconstruction is the squared error of the normalised log-mel plus `spectral_weight`
    times the spectral convergence of the mel magnitudes: the log error alone weights quiet
    bins like loud ones and barely punishes a smeared partial, which is what the ear (and
    spectral convergence after phase reconstruction) notices most."""
    if sample:
        recon, mu, logvar = model(log_mels, generator=generator)
    else:
        mu, logvar = model.encode(log_mels)
        recon = model.decode_normalised(mu)
    target = model.normalise(log_mels)
    reconstruction = (recon - target).pow(2).flatten(1).sum(dim=1)
    decoded_mel = torch.expm1((recon * model.mel_std + model.mel_mean).clamp(min=0.0))
    target_mel = torch.expm1(log_mels)
    convergence = (decoded_mel - target_mel).flatten(1).norm(dim=1) / target_mel.flatten(1).norm(dim=1).clamp(min=1e-6)
    if spectral_weight:
        reconstruction = reconstruction + spectral_weight * convergence
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return reconstruction, kl, mu, convergence.detach()


@torch.no_grad()
def evaluate_windows(
    model: MelVAE, log_mels: torch.Tensor, beta: float, spectral_weight: float = 0.0, batch_size: int = 64
) -> dict[str, float]:
    """Validation figures on fixed log-mel windows `[N, n_mels, frames]` (posterior means, no noise)."""
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
    mu_all = torch.cat(mus)
    active = int((mu_all.var(dim=0, unbiased=False) > ACTIVE_DIM_VARIANCE).sum().item()) if n > 1 else 0
    recon, kl = recon_sum / n, kl_sum / n
    return {
        "reconstruction": recon,
        "kl": kl,
        "loss": recon + beta * kl,
        "active_dims": active,
        "mel_spectral_convergence": sc_sum / n,
    }


@torch.no_grad()
def windows_to_log_mel(
    windows: torch.Tensor, settings: SpectrogramSettings, device: torch.device, batch: int = 64
) -> torch.Tensor:
    parts = [log_mel(windows[i : i + batch].to(device), settings) for i in range(0, windows.shape[0], batch)]
    if not parts:
        return torch.empty(0, settings.n_mels, settings.window_frames, device=device)
    return torch.cat(parts)


@torch.no_grad()
def mel_statistics(
    clips: list, settings: SpectrogramSettings, hop_samples: int, silence_dbfs: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mel-bin mean and standard deviation `[n_mels]` over every frame of the unaugmented
    training windows, streamed in batches (a large dataset never sits in memory as log-mels)."""
    sampler = WindowSampler(clips, settings.window_samples, hop_samples, silence_dbfs, Augmentation.none())
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


def _state_path(state_dir: Path) -> Path:
    return state_dir / "state.pt"


def _check_state_matches(
    state: dict[str, Any], cfg: TrainConfig, settings: SpectrogramSettings, fingerprint: dict[str, Any]
) -> None:
    stored_cfg = state["config"]
    current = cfg.to_dict()
    ignored = {"resume", "max_epochs", "max_minutes", "threads", "overwrite"}
    changed = [k for k in current if k not in ignored and stored_cfg.get(k) != current[k]]
    if changed:
        key = changed[0]
        raise SdaError(
            f"resume=true: {key}={current[key]!r} differs from the interrupted run's {stored_cfg.get(key)!r}; "
            "resume with the same settings or start a new name"
        )
    differences = SpectrogramSettings.from_dict(state["spectrogram"]).differences(settings)
    if differences:
        raise SdaError(f"resume=true: spectrogram settings differ from the interrupted run: {'; '.join(differences)}")
    if state["dataset"]["content_hash"] != fingerprint["content_hash"]:
        raise SdaError(
            "resume=true: the dataset changed since the interrupted run (content hash differs); start a new name"
        )


def train_model(
    cfg: TrainConfig,
    base_dir: Path | None = None,
    command: str = "",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    show_progress: bool | None = None,
) -> TrainingResult:
    """Train per `cfg`; write `models_dir/NAME.pt` atomically and return its path and record.

    Relative paths (dataset.path, models_dir) are taken from `base_dir` (default: the current
    folder). Raises SdaError subclasses (one line each) for unusable input; a failed run never
    leaves a model file where a good one is expected."""
    started = time.perf_counter()
    base_dir = Path(base_dir or Path.cwd())
    model_path, state_dir = model_paths(cfg, base_dir)
    state_file = _state_path(state_dir)
    if model_path.exists() and not cfg.overwrite:
        raise SdaError(f"name={cfg.name!r}: {model_path} already exists; choose another name or pass overwrite=true")
    if cfg.resume and not state_file.exists():
        raise SdaError(f"resume=true: no interrupted run to continue ({state_file} does not exist)")
    if not cfg.resume and state_file.exists():
        raise SdaError(
            f"name={cfg.name!r}: an interrupted run exists in {state_dir}; continue it with resume=true "
            "or delete that folder"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    settings = spectrogram_settings(cfg)

    root = dataset_root(cfg, base_dir)
    if cfg.dataset.synthesize_demo:
        ensure_demo_corpus(root, seed=cfg.dataset.demo_seed)
    dataset: LoadedDataset = load_audio_folder(root, sample_rate=settings.sample_rate)  # warns per skipped file
    fingerprint = dataset.fingerprint.to_dict()

    train_clips, val_clips = split_by_file(
        list(dataset.clips), cfg.dataset.validation_fraction, cfg.seed, settings.sample_rate
    )
    hop_samples = max(1, round(settings.window_samples * cfg.dataset.hop_fraction))
    train_sampler = WindowSampler(
        train_clips, settings.window_samples, hop_samples, cfg.dataset.silence_dbfs, _augmentation(cfg)
    )
    if len(train_sampler) == 0:
        raise DatasetError(
            f"dataset.path={str(root)!r}: no usable {settings.window_s:g} s window "
            f"above {cfg.dataset.silence_dbfs:g} dBFS "
            f"in {dataset.fingerprint.total_seconds:.2f} s of audio; need at least one window of sound"
        )
    val_sampler = WindowSampler(
        val_clips, settings.window_samples, hop_samples, cfg.dataset.silence_dbfs, Augmentation.none()
    )
    val_windows = val_sampler.fixed_windows() if len(val_sampler) else torch.empty(0, settings.window_samples)
    independent_validation = val_windows.shape[0] > 0
    if not independent_validation:
        log.warning("the validation files hold no usable window; validating on training windows (not independent)")
        val_windows = WindowSampler(
            train_clips, settings.window_samples, hop_samples, cfg.dataset.silence_dbfs, Augmentation.none()
        ).fixed_windows()

    hyper = ModelHyperparameters(latent_dim=cfg.latent_dim, channels=tuple(cfg.channels))
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # parameter initialisation only; nothing later touches the global RNG
    model = MelVAE(settings, hyper).to(device)
    val_log_mels = windows_to_log_mel(val_windows, settings, device)
    model.set_normalisation(*mel_statistics(train_clips, settings, hop_samples, cfg.dataset.silence_dbfs, device))

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=max(2, cfg.patience // 4))
    history: list[dict[str, float]] = []
    best = {"loss": math.inf, "epoch": 0, "state": None}
    start_epoch, windows_seen, elapsed_before = 1, 0, 0.0
    stale_epochs = 0

    if cfg.resume:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        if state.get("format_version") != STATE_FORMAT_VERSION:
            raise SdaError(f"resume=true: {state_file} has an unknown state format; start a new name")
        _check_state_matches(state, cfg, settings, fingerprint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        history = list(state["history"])
        best = {"loss": state["best_loss"], "epoch": state["best_epoch"], "state": state["best_model"]}
        start_epoch = int(state["epoch"]) + 1
        windows_seen = int(state["windows_seen"])
        elapsed_before = float(state["elapsed_s"])
        stale_epochs = int(state["stale_epochs"])
        log.info("resuming %s from epoch %d", cfg.name, start_epoch)

    stopped_because = "max_epochs"
    train_seconds, windows_this_session = 0.0, 0
    progress = tqdm(
        range(start_epoch, cfg.max_epochs + 1),
        initial=start_epoch - 1,
        total=cfg.max_epochs,
        desc=f"train {cfg.name}",
        unit="epoch",
        disable=(not _is_terminal()) if show_progress is None else not show_progress,
        dynamic_ncols=True,
    )
    for epoch in progress:
        beta = cfg.beta * min(1.0, epoch / cfg.kl_warmup_epochs) if cfg.kl_warmup_epochs else cfg.beta
        model.train()
        epoch_start = time.perf_counter()
        total, count = 0.0, 0
        for batch in train_sampler.epoch(generator, cfg.batch_size):
            log_mels = log_mel(batch.to(device), settings)
            reconstruction, kl, _, _ = _loss_terms(model, log_mels, generator, True, cfg.spectral_weight)
            kl_floor = kl.mean(dim=0).clamp(min=cfg.free_bits).sum()
            loss = reconstruction.mean() + beta * kl_floor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            total += (reconstruction.detach().sum() + beta * kl.detach().sum()).item()
            count += batch.shape[0]
        train_seconds += time.perf_counter() - epoch_start
        windows_seen += count
        windows_this_session += count
        val = evaluate_windows(model, val_log_mels, cfg.beta, cfg.spectral_weight)
        row = {
            "epoch": epoch,
            "beta": beta,
            "train_loss": total / max(count, 1),
            "validation_loss": val["loss"],
            "validation_reconstruction": val["reconstruction"],
            "validation_kl": val["kl"],
            "validation_mel_spectral_convergence": val["mel_spectral_convergence"],
            "active_dims": val["active_dims"],
        }
        history.append(row)
        progress.set_postfix(
            train=f"{row['train_loss']:.0f}", val=f"{val['loss']:.0f}", kl=f"{val['kl']:.1f}", active=val["active_dims"]
        )
        if on_epoch:
            on_epoch(epoch, row)

        warmed_up = epoch >= cfg.kl_warmup_epochs
        if warmed_up:
            scheduler.step(val["loss"])
            if val["loss"] < best["loss"] - cfg.min_delta:
                best = {
                    "loss": val["loss"],
                    "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                }
                stale_epochs = 0
            else:
                stale_epochs += 1
        elapsed = elapsed_before + time.perf_counter() - started
        if epoch % cfg.checkpoint_every == 0:
            log.info(
                "epoch %d: train %.1f, validation %.1f (reconstruction %.1f, KL %.1f), "
                "%d/%d dims active, beta %.2f, %.0f s",
                epoch,
                row["train_loss"],
                val["loss"],
                val["reconstruction"],
                val["kl"],
                val["active_dims"],
                cfg.latent_dim,
                beta,
                elapsed,
            )
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.max_epochs:
            save_torch_file(
                {
                    "format_version": STATE_FORMAT_VERSION,
                    "epoch": epoch,
                    "config": cfg.to_dict(),
                    "spectrogram": settings.to_dict(),
                    "dataset": fingerprint,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "history": history,
                    "best_loss": best["loss"],
                    "best_epoch": best["epoch"],
                    "best_model": best["state"],
                    "windows_seen": windows_seen,
                    "elapsed_s": elapsed,
                    "stale_epochs": stale_epochs,
                },
                state_file,
                replace=True,
            )
        if warmed_up and stale_epochs >= cfg.patience:
            stopped_because = f"early stopping: no validation improvement for {cfg.patience} epochs"
            break
        if elapsed / 60.0 >= cfg.max_minutes:
            stopped_because = f"time budget of {cfg.max_minutes:g} minutes"
            break
    progress.close()

    final_epoch = history[-1]["epoch"] if history else start_epoch - 1
    if best["state"] is None:  # stopped before warm-up ended: keep the last weights
        best = {"loss": history[-1]["validation_loss"], "epoch": final_epoch, "state": model.state_dict()}
    model.load_state_dict(best["state"])
    final_val = evaluate_windows(model, val_log_mels, cfg.beta, cfg.spectral_weight)
    wall_time = elapsed_before + time.perf_counter() - started
    record = {
        "dataset": {
            **fingerprint,
            "path": str(root),
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in dataset.skipped],
            "train_files": len(train_clips),
            "validation_files": len(val_clips),
            "train_windows": len(train_sampler),
            "validation_windows": int(val_windows.shape[0]),
            "independent_validation": independent_validation,
        },
        "epochs": final_epoch,
        "best_epoch": best["epoch"],
        "stopped_because": stopped_because,
        "final_train_loss": history[-1]["train_loss"],
        "final_validation_loss": final_val["loss"],
        "best_validation_loss": best["loss"],
        "validation_reconstruction": final_val["reconstruction"],
        "validation_kl": final_val["kl"],
        "validation_mel_spectral_convergence": final_val["mel_spectral_convergence"],
        "active_latent_dims": final_val["active_dims"],
        "latent_dim": cfg.latent_dim,
        "wall_time_s": wall_time,
        "windows_seen": windows_seen,
        "windows_per_second": windows_this_session / max(train_seconds, 1e-9),
        "augmentation": dataclasses.asdict(_augmentation(cfg)),
        "config": cfg.to_dict(),
        "command": command,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "threads": torch.get_num_threads(),
            "device": str(device),
        },
        **versions(),
        "history": history,
    }
    model_path.parent.mkdir(parents=True, exist_ok=True)
    save_torch_file(checkpoint_record(model, record), model_path, replace=cfg.overwrite)
    read_checkpoint(model_path)  # what we wrote must load
    shutil.rmtree(state_dir, ignore_errors=True)
    return TrainingResult(model_path=model_path, record=record)


def _is_terminal() -> bool:
    import sys

    return sys.stderr.isatty()
