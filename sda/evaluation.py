"""Evaluating a model against two baselines computed in the same run.

(a) Reconstruction on held-out files: each non-silent 1 s window is encoded and decoded with
    the posterior mean; we report the log-mel L1 distance, and the spectral convergence of the
    audio rebuilt from the decoded log-mel (inverse mel + Griffin-Lim) against the window's own
    STFT magnitude.
(b) Generation: a Fréchet distance between Gaussian statistics (mean and covariance over mel
    bins) of the log-mel frames of N generated clips and of the dataset's windows.

Baselines: the same architecture untrained (random weights from `seed`, with the trained
model's normalisation statistics, so it is not handicapped by scale), and noise shaped to the
dataset's average magnitude spectrum (random phase). Lower is better for every figure.

Held-out files: when the dataset is the one the model was trained on (same content hash), the
training run's validation files (same split rule and seed); otherwise every file.

Log-mel statistics depend on level, and generated clips are peak-normalised: for (b) every
clip, generated or not, is first scaled to an RMS of -20 dBFS.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sda.config import EvaluateConfig, GenerationConfig, PhaseConfig, resolve_device
from sda.data.corpus import ensure_demo_corpus
from sda.data.folder import load_audio_folder
from sda.data.windows import Augmentation, WindowSampler, split_by_file
from sda.dsp.phase import griffin_lim, inverse_mel, spectral_convergence
from sda.dsp.spectrogram import SpectrogramSettings, decompress, istft, log_mel, stft
from sda.errors import DatasetError
from sda.model import LoadedModel, MelVAE, load_model, resolve_checkpoint
from sda.pipeline import GenerationPipeline
from sda.versions import versions

log = logging.getLogger(__name__)

FEATURE_RMS_DBFS = -20.0
SUBJECTS = ("model", "untrained", "shaped_noise")


@dataclass
class Evaluation:
    figures: dict[str, dict[str, float]]  # subject -> figure -> value
    details: dict[str, Any]

    def beats_baselines(self) -> dict[str, bool]:
        return {
            figure: all(self.figures["model"][figure] < self.figures[b][figure] for b in ("untrained", "shaped_noise"))
            for figure in self.figures["model"]
        }

    def table(self) -> str:
        figures = list(self.figures["model"])
        width = max(len(f) for f in figures) + 2
        header = f"{'':{width}s}" + "".join(f"{name:>14s}" for name in SUBJECTS)
        rows = [header]
        for figure in figures:
            rows.append(f"{figure:{width}s}" + "".join(f"{self.figures[s][figure]:14.4f}" for s in SUBJECTS))
        wins = self.beats_baselines()
        rows.append(
            "model beats both baselines: " + ", ".join(f"{f} {'yes' if ok else 'NO'}" for f, ok in wins.items())
        )
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"figures": self.figures, "beats_baselines": self.beats_baselines(), **self.details}


def untrained_like(model: LoadedModel, seed: int) -> LoadedModel:
    """Same architecture, random weights from `seed`, the trained model's normalisation."""
    torch.manual_seed(seed)
    vae = MelVAE(model.settings, model.vae.hyper)
    vae.set_normalisation(model.vae.mel_mean.cpu().flatten(), model.vae.mel_std.cpu().flatten())
    vae.eval().requires_grad_(False).to(model.device)
    return LoadedModel(vae=vae, path=model.path, name=f"{model.name}-untrained", sha256="untrained", training={})


def rms_normalise(audio: torch.Tensor, dbfs: float = FEATURE_RMS_DBFS) -> torch.Tensor:
    """Scale each `[..., samples]` row to the given RMS (silent rows stay silent)."""
    rms = audio.pow(2).mean(dim=-1, keepdim=True).sqrt()
    return torch.where(rms > 0, audio * (10 ** (dbfs / 20) / rms.clamp(min=1e-12)), audio)


def frame_statistics(audio: torch.Tensor, settings: SpectrogramSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `[n_mels]` and covariance `[n_mels, n_mels]` of log-mel frames of `[N, samples]` clips."""
    frames = log_mel(rms_normalise(audio), settings).transpose(-1, -2).reshape(-1, settings.n_mels).double()
    return frames.mean(dim=0), torch.cov(frames.T)


def frechet_distance(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Fréchet distance between two Gaussians: |mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2)."""
    (mu_a, cov_a), (mu_b, cov_b) = a, b
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt)


def shaped_noise(
    average_magnitude: torch.Tensor, settings: SpectrogramSettings, clips: int, samples: int, seed: int
) -> torch.Tensor:
    """`[clips, samples]` noise whose STFT magnitude is the given `[n_freqs]` average, random phase."""
    g = torch.Generator().manual_seed(seed)
    frames = 1 + samples // settings.hop_length
    phase = 2 * math.pi * torch.rand(clips, settings.n_freqs, frames, generator=g)
    spec = torch.polar(average_magnitude[:, None].expand(clips, -1, frames).contiguous(), phase)
    return istft(spec, settings, samples)


@torch.no_grad()
def reconstruction_figures(
    vae: MelVAE, windows: torch.Tensor, settings: SpectrogramSettings, phase: PhaseConfig
) -> tuple[float, float]:
    """(log-mel L1, spectral convergence) of `[N, samples]` windows through the VAE."""
    target = log_mel(windows, settings)
    mu, _ = vae.encode(target)
    decoded = vae.decode(mu)
    audio = _rebuild(decoded, settings, phase, windows.shape[-1])
    sc = spectral_convergence(audio, stft(windows, settings).abs(), settings)
    return float((decoded - target).abs().mean()), float(sc.mean())


def _rebuild(log_mels: torch.Tensor, settings: SpectrogramSettings, phase: PhaseConfig, samples: int) -> torch.Tensor:
    magnitude = inverse_mel(decompress(log_mels), settings, phase.inverse_mel.value)
    return griffin_lim(
        magnitude,
        settings,
        samples,
        phase.iterations,
        phase.momentum,
        phase.init.value,
        generators=[torch.Generator().manual_seed(i) for i in range(log_mels.shape[0])]
        if phase.init.value == "random"
        else None,
    )


def evaluate_model(cfg: EvaluateConfig, base_dir: Path) -> Evaluation:
    device = resolve_device(cfg.device)
    model = load_model(resolve_checkpoint(cfg.model.checkpoint, base_dir), device)
    settings = model.settings
    root = Path(cfg.dataset.path).expanduser()
    root = root if root.is_absolute() else base_dir / root
    if cfg.dataset.synthesize_demo:
        ensure_demo_corpus(root, seed=cfg.dataset.demo_seed)
    dataset = load_audio_folder(root, settings.sample_rate)

    trained_on = model.training.get("dataset", {}).get("content_hash")
    same_data = trained_on == dataset.fingerprint.content_hash
    if same_data:
        train_cfg = model.training["config"]
        _, held_out = split_by_file(
            list(dataset.clips), train_cfg["dataset"]["validation_fraction"], train_cfg["seed"], settings.sample_rate
        )
    else:
        held_out = list(dataset.clips)
    hop = settings.window_samples // 2
    silence = cfg.dataset.silence_dbfs
    held_windows = WindowSampler(held_out, settings.window_samples, hop, silence, Augmentation.none()).fixed_windows()
    all_windows = WindowSampler(
        list(dataset.clips), settings.window_samples, hop, silence, Augmentation.none()
    ).fixed_windows()
    if held_windows.shape[0] == 0 or all_windows.shape[0] == 0:
        raise DatasetError(f"dataset.path={str(root)!r}: no usable window to evaluate on")
    held_windows, all_windows = held_windows.to(device), all_windows.to(device)

    untrained = untrained_like(model, cfg.seed)
    average_magnitude = stft(all_windows, settings).abs().mean(dim=(0, 2))
    noise_windows = shaped_noise(
        average_magnitude.cpu(), settings, held_windows.shape[0], settings.window_samples, cfg.seed
    ).to(device)

    figures: dict[str, dict[str, float]] = {s: {} for s in SUBJECTS}
    for subject, vae in (("model", model.vae), ("untrained", untrained.vae)):
        l1, sc = reconstruction_figures(vae, held_windows, settings, cfg.phase)
        figures[subject]["reconstruction_log_mel_l1"] = l1
        figures[subject]["reconstruction_spectral_convergence"] = sc
    target = log_mel(held_windows, settings)
    figures["shaped_noise"]["reconstruction_log_mel_l1"] = float(
        (log_mel(noise_windows, settings) - target).abs().mean()
    )
    figures["shaped_noise"]["reconstruction_spectral_convergence"] = float(
        spectral_convergence(noise_windows, stft(held_windows, settings).abs(), settings).mean()
    )

    reference = frame_statistics(all_windows, settings)
    generation = GenerationConfig(duration_s=cfg.clip_s, phase=cfg.phase, device=cfg.device)
    seeds = list(range(cfg.seed, cfg.seed + cfg.generated_clips))
    for subject, subject_model in (("model", model), ("untrained", untrained)):
        pipeline = GenerationPipeline(subject_model, generation, device)
        audio = torch.cat([torch.from_numpy(r.audio) for r in pipeline.generate(seeds)])
        figures[subject]["frechet_distance"] = frechet_distance(frame_statistics(audio.to(device), settings), reference)
    noise_clips = shaped_noise(
        average_magnitude.cpu(), settings, cfg.generated_clips, round(cfg.clip_s * settings.sample_rate), cfg.seed + 1
    )
    figures["shaped_noise"]["frechet_distance"] = frechet_distance(
        frame_statistics(noise_clips.to(device), settings), reference
    )

    details = {
        "model": {"name": model.name, "path": str(model.path), "sha256": model.sha256},
        "dataset": {
            **dataset.fingerprint.to_dict(),
            "path": str(root),
            "same_as_training": same_data,
            "held_out_files": len(held_out),
            "held_out_windows": int(held_windows.shape[0]),
            "reference_windows": int(all_windows.shape[0]),
        },
        "generated_clips": cfg.generated_clips,
        "clip_s": cfg.clip_s,
        "seed": cfg.seed,
        "phase": cfg.phase.to_dict(),
        "feature_rms_dbfs": FEATURE_RMS_DBFS,
        **versions(),
    }
    return Evaluation(figures=figures, details=details)
