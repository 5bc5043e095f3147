"""`python -m sda.evaluate`: figures next to two baselines, and the shipped model beating both."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from sda.dsp.spectrogram import SpectrogramSettings
from sda.evaluation import frame_statistics, frechet_distance, shaped_noise
from tests.helpers import run_sda

SUBJECTS = ("model", "untrained", "shaped_noise")
FIGURES = ("reconstruction_log_mel_l1", "reconstruction_spectral_convergence", "frechet_distance")


def test_frechet_distance_is_zero_for_equal_statistics_and_grows_with_a_shift():
    settings = SpectrogramSettings()
    g = torch.Generator().manual_seed(0)
    clips = 0.1 * torch.randn(4, 48000, generator=g, dtype=torch.float64).float()
    stats = frame_statistics(clips, settings)
    assert abs(frechet_distance(stats, stats)) < 1e-6
    mean, cov = stats
    shifted = (mean + 1.0, cov)
    # A shift of 1 in every one of the 128 mel bins adds exactly 128 to the distance.
    assert math.isclose(frechet_distance(stats, shifted), 128.0, rel_tol=1e-6)


def test_shaped_noise_has_the_requested_average_spectrum():
    settings = SpectrogramSettings()
    target = torch.zeros(settings.n_freqs)
    bin_1k = round(1000 * settings.n_fft / settings.sample_rate)
    target[bin_1k - 2 : bin_1k + 3] = 10.0
    noise = shaped_noise(target, settings, clips=2, samples=48000, seed=0)
    spectrum = torch.fft.rfft(noise, dim=-1).abs().mean(dim=0)
    peak_hz = float(spectrum.argmax()) * settings.sample_rate / noise.shape[-1]
    assert abs(peak_hz - 1000) < 60


def test_evaluate_command_writes_the_table_and_the_shipped_model_beats_both_baselines(tmp_path: Path):
    out = tmp_path / "evaluation.json"
    corpus = tmp_path / "demo_corpus"  # synthesised by the command: same content as the training corpus
    done = run_sda(
        "evaluate",
        "generated_clips=8",
        "clip_s=2",
        f"dataset.path={corpus}",
        f"output={out}",
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    for subject in SUBJECTS:
        assert set(report["figures"][subject]) == set(FIGURES)
    assert report["dataset"]["same_as_training"], "the demo corpus is what the shipped model was trained on"
    assert report["dataset"]["held_out_files"] >= 1
    for figure in FIGURES:
        model = report["figures"]["model"][figure]
        assert model < report["figures"]["untrained"][figure], figure
        assert model < report["figures"]["shaped_noise"][figure], figure
    assert all(report["beats_baselines"].values())
    assert "frechet_distance" in done.stdout and "model beats both baselines" in done.stdout
