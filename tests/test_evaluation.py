"""`python -m sda.evaluate`: the model between two baselines and two real-data references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sda.config import EvaluateConfig, to_evaluate_config
from sda.config.evaluation import CorpusConfig, SuiteConfig
from sda.data.corpus import FAMILIES, synthesize_clip
from sda.dsp.spectrogram import SpectrogramSettings
from sda.errors import CheckpointError, DatasetError
from sda.evaluation import (
    FIGURES,
    SUBJECTS,
    evaluate_suite,
    feature_log_mels,
    frame_statistics,
    frechet_distance,
    gaussian,
    log_mel_frames,
    modulation_features,
    shaped_noise,
)
from sda.novelty import NEAR_COPY_DB
from sda.preflight import compose_config
from tests.helpers import make_tiny_dataset, run_sda

pytestmark = pytest.mark.usefixtures("one_thread")

# the figures the shipped model beat both baselines on before the modulation figure existed
FRAME_FIGURES = ("reconstruction_log_mel_l1", "reconstruction_spectral_convergence", "frechet_distance")


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


def _demo_crops(takes: range, seconds: float = 2.0) -> torch.Tensor:
    """`[families * takes, samples]`: the first `seconds` of demo clips, mono."""
    crops = []
    for family in FAMILIES:
        for take in takes:
            audio = synthesize_clip(family, take, seed=0)
            audio = audio.mean(axis=1) if audio.ndim == 2 else audio
            crops.append(torch.from_numpy(audio[: round(seconds * 48000)].astype(np.float32)))
    return torch.stack(crops)


def test_shuffling_frames_in_time_leaves_the_frame_frechet_distance_but_raises_the_modulation_one():
    settings = SpectrogramSettings()
    reference = feature_log_mels(_demo_crops(range(4)), settings)
    real = feature_log_mels(_demo_crops(range(4, 8)), settings)
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([clip[:, torch.randperm(clip.shape[-1], generator=g)] for clip in real])

    def frame_fd(log_mels: torch.Tensor) -> float:
        return frechet_distance(gaussian(log_mel_frames(log_mels)), gaussian(log_mel_frames(reference)))

    def modulation_fd(log_mels: torch.Tensor) -> float:
        return frechet_distance(
            gaussian(modulation_features(log_mels, settings)), gaussian(modulation_features(reference, settings))
        )

    assert frame_fd(shuffled) == pytest.approx(frame_fd(real), rel=1e-6)
    assert modulation_fd(shuffled) > 3 * modulation_fd(real)


def test_modulation_features_see_the_rate_of_an_amplitude_modulation():
    settings = SpectrogramSettings()
    t = torch.arange(2 * 48000) / 48000
    carrier = torch.sin(2 * math.pi * 440 * t)
    slow = carrier * (1 + 0.9 * torch.sin(2 * math.pi * 3 * t))  # 3 Hz: the 2-4 Hz modulation band
    fast = carrier * (1 + 0.9 * torch.sin(2 * math.pi * 12 * t))  # 12 Hz: the 8-16 Hz band
    features = modulation_features(feature_log_mels(torch.stack([slow, fast]), settings), settings)
    per_band = features.reshape(2, -1, 8, 5).mean(dim=1).amax(dim=1)  # [clip, modulation band]
    assert int(per_band[0].argmax()) == 1 and int(per_band[1].argmax()) == 3


def test_evaluate_command_places_the_model_between_noise_and_held_out_audio_and_copies_are_caught(tmp_path: Path):
    out = tmp_path / "evaluation.json"
    corpus = tmp_path / "demo_corpus"  # synthesized by the command: same content as the training corpus
    done = run_sda(
        "evaluate",
        "generated_clips=8",
        "clip_s=2",
        f"dataset.path={corpus}",
        f"output={out}",
        cwd=tmp_path,
        timeout=600,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert set(figures) == set(SUBJECTS)
    for subject in SUBJECTS:
        assert set(figures[subject]) == set(FIGURES)
    assert figures["copy"]["reconstruction_log_mel_l1"] is None, "copies and held-out audio are not reconstructed"
    assert report["dataset"]["same_as_training"], "the demo corpus is what the shipped model was trained on"
    assert report["split"]["trained_on_this_corpus"]
    assert report["dataset"]["held_out_files"] >= 1
    for figure in FRAME_FIGURES:
        model = figures["model"][figure]
        assert model < figures["untrained"][figure], figure
        assert model < figures["shaped_noise"][figure], figure
        assert report["beats_baselines"][figure]

    # the floor: held-out real audio is nearer the training audio's statistics than noise is
    for figure in ("frechet_distance", "modulation_frechet_distance"):
        assert figures["held_out"][figure] < figures["shaped_noise"][figure], figure
    noise, floor, model = (figures[s]["frechet_distance"] for s in ("shaped_noise", "held_out", "model"))
    assert report["summary"]["frechet_gap_closed"] == pytest.approx((noise - model) / (noise - floor))

    # memorization cannot pass for quality: playback is caught, new real audio is not a copy
    assert figures["copy"]["nearest_training_db"] <= NEAR_COPY_DB and figures["copy"]["near_copy_share"] == 1.0
    assert figures["held_out"]["nearest_training_db"] > 2 * NEAR_COPY_DB
    reference_files = set(report["split"]["reference_files"])
    assert all(n["file"] in reference_files for n in report["nearest_training_windows"]["copy"])
    assert set(report["targets"]) == {
        "frechet_gap_closed",
        "model_reconstruction_spectral_convergence",
        "nearest_training_ratio",
    }
    for line in ("modulation_frechet_distance", "nearest_training_db", "gap the model closes", "targets:"):
        assert line in done.stdout


def test_the_dev_suite_names_the_demo_corpus_and_three_real_groups():
    config = to_evaluate_config(compose_config("evaluate", ["suite=dev"], EvaluateConfig))
    corpora = config.suite.corpora
    assert corpora["demo"].synthesize_demo
    assert {"sonic_pi_textures", "sonic_pi_loops", "sonic_pi_one_shots"} <= set(corpora)
    assert all(c.path.startswith("data/corpora/") for name, c in corpora.items() if name != "demo")


@pytest.mark.parametrize(
    ("corpus", "error", "message"),
    [
        ({"path": "absent"}, DatasetError, r"suite\.corpora\.absent\.path="),
        ({"path": "tones", "checkpoint": "models/absent.pt"}, CheckpointError, "absent.pt"),
    ],
)
def test_a_suite_with_a_missing_corpus_or_model_fails_before_generating_anything(
    tmp_path: Path, tiny_dataset: Path, corpus: dict, error: type, message: str
):
    corpus = {**corpus, "path": str(tiny_dataset if corpus["path"] == "tones" else tmp_path / corpus["path"])}
    config = EvaluateConfig(
        suite=SuiteConfig(corpora={"tones": CorpusConfig(path=str(tiny_dataset)), "absent": CorpusConfig(**corpus)})
    )
    with pytest.raises(error, match=message):
        evaluate_suite(config, tmp_path)


@pytest.mark.slow
def test_a_suite_evaluates_every_corpus_and_splits_a_corpus_the_model_never_saw(tmp_path: Path, tiny_dataset: Path):
    config = EvaluateConfig(
        generated_clips=3,
        clip_s=1.5,
        suite=SuiteConfig(
            corpora={
                "tones": CorpusConfig(path=str(tiny_dataset), validation_fraction=0.34),
                "three": CorpusConfig(path=str(make_tiny_dataset(tmp_path / "three", files=3))),
            }
        ),
    )
    suite = evaluate_suite(config, tmp_path)
    report = json.loads(json.dumps(suite.to_dict()))
    assert list(report["corpora"]) == ["tones", "three"]
    tones = report["corpora"]["tones"]
    split = tones["split"]
    assert not split["trained_on_this_corpus"] and "standing in for training data" in split["reference"]
    assert len(split["held_out_files"]) == 2 and len(split["reference_files"]) == 4
    assert sorted(split["held_out_files"] + split["reference_files"]) == [f"tone_{i}.wav" for i in range(6)]
    # every file is unseen by the model, so every file's windows are reconstructed
    assert tones["dataset"]["reconstruction_windows"] > tones["dataset"]["reference_windows"]
    assert all(len(c["nearest_training_windows"]["model"]) == 3 for c in report["corpora"].values())
    rows = suite.table().splitlines()
    assert [row.split()[:2] for row in rows[2:4]] == [["tones", "NO"], ["three", "NO"]]
    assert "model: default on every corpus" in rows
