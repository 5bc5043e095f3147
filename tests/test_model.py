"""The VAE's shapes and the checkpoint format's guarantees."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sda.config import GenerationConfig, TrainConfig, to_train_config
from sda.dsp.spectrogram import SpectrogramSettings, mel_filterbank
from sda.errors import CheckpointError, OutputError
from sda.model import (
    CHECKPOINT_FORMAT_VERSION,
    GlobalLatentHyperparameters,
    GlobalLatentVAE,
    MelVAE,
    ModelHyperparameters,
    checkpoint_record,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from sda.pipeline import GenerationPipeline
from sda.preflight import compose_config


@pytest.fixture
def small_vae() -> MelVAE:
    torch.manual_seed(0)
    settings = SpectrogramSettings(n_fft=1024, hop_length=256, n_mels=64, window_s=0.5)
    return MelVAE(settings, ModelHyperparameters(latent_dim=8, channels=(4, 8, 8)))


@pytest.fixture
def saved(tmp_path: Path, small_vae: MelVAE) -> Path:
    return save_checkpoint(small_vae, {"note": "test"}, tmp_path / "small.pt")


@pytest.mark.parametrize(
    "settings, hyper",
    [
        (SpectrogramSettings(), ModelHyperparameters()),
        (
            SpectrogramSettings(n_fft=1024, hop_length=256, n_mels=80, window_s=0.75),
            ModelHyperparameters(latent_dim=16, channels=(8, 16, 32)),
        ),
        (
            SpectrogramSettings(hop_length=300, n_mels=100, window_s=1.3),
            ModelHyperparameters(latent_dim=5, channels=(3,)),
        ),
    ],
)
def test_every_layer_is_built_at_construction_and_decoding_gives_mel_windows(settings, hyper):
    vae = MelVAE(settings, hyper)
    parameters_before = {name: p.shape for name, p in vae.named_parameters()}
    assert parameters_before, "no parameters"
    frames = 1 + round(settings.window_s * settings.sample_rate) // settings.hop_length
    log_mel = torch.rand(3, settings.n_mels, frames) * 4
    recon, mu, logvar = vae(log_mel, generator=torch.Generator().manual_seed(0))
    decoded = vae.decode(torch.randn(5, vae.latent_size))
    latent_frames = -(-frames // 2 ** len(hyper.channels))  # one per 2**levels frames, rounded up
    assert vae.latent_size == hyper.latent_dim * latent_frames
    assert recon.shape == (3, settings.n_mels, frames)
    assert mu.shape == logvar.shape == (3, hyper.latent_dim, latent_frames)
    assert vae.encode(log_mel)[0].shape == (3, vae.latent_size)
    assert decoded.shape == (5, settings.n_mels, frames)
    assert decoded.min() >= 0, "a log1p magnitude is never negative"
    # a forward pass created nothing new: all shapes were fixed at construction
    assert {name: p.shape for name, p in vae.named_parameters()} == parameters_before


def test_checkpoint_round_trip_restores_identical_decoding(saved: Path, small_vae: MelVAE):
    loaded = load_model(saved, "cpu")
    z = torch.randn(4, loaded.latent_dim)
    assert torch.equal(loaded.vae.decode(z), small_vae.eval().decode(z))
    assert loaded.settings == small_vae.settings
    assert loaded.training == {"note": "test"}
    assert len(loaded.sha256) == 64 and loaded.name == "small"


def test_checkpoint_is_loaded_with_weights_only(saved: Path):
    record = torch.load(saved, weights_only=True)
    assert record["format"] == "sda-checkpoint"
    assert record["format_version"] == CHECKPOINT_FORMAT_VERSION
    assert set(record) == {
        "format",
        "format_version",
        "hyperparameters",
        "spectrogram",
        "training",
        "state_dict",
        "training_summary",
    }


def test_a_format_1_checkpoint_still_loads_without_a_training_summary(tmp_path: Path):
    path, _ = _format_1_checkpoint(tmp_path / "v1.pt")
    loaded = load_model(path, "cpu")
    assert loaded.summary is None and loaded.training["note"] == "format 1"
    record = torch.load(path, weights_only=True)
    record["format_version"] = 2  # format 2 must carry the section, even when it is empty
    torch.save(record, tmp_path / "v2.pt")
    assert "lacks its 'training_summary' section" in _one_line_error(tmp_path / "v2.pt")


def _one_line_error(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path, "cpu", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_checkpoint_is_one_clear_line(tmp_path: Path):
    assert "does not exist" in _one_line_error(tmp_path / "nope.pt")


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path):
    wav = tmp_path / "song.pt"
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100))
    assert "not an sda checkpoint" in _one_line_error(wav)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    assert "not an sda checkpoint" in _one_line_error(plain)


def test_truncated_checkpoint_is_reported_as_truncated(saved: Path, tmp_path: Path):
    data = saved.read_bytes()
    for fraction in (0.3, 0.9):
        cut = tmp_path / f"cut{fraction}.pt"
        cut.write_bytes(data[: int(len(data) * fraction)])
        assert "truncated or corrupt" in _one_line_error(cut)


def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "sda-checkpoint", "payload": Payload()}, evil)
    assert "refused" in _one_line_error(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    "version, expected",
    [(CHECKPOINT_FORMAT_VERSION + 1, "newer than this sda reads"), (0, "unknown"), ("1", "unknown")],
)
def test_unknown_or_newer_format_version_is_refused(tmp_path: Path, small_vae: MelVAE, version, expected):
    record = checkpoint_record(small_vae, {})
    record["format_version"] = version
    path = tmp_path / "v.pt"
    torch.save(record, path)
    assert expected in _one_line_error(path)


def test_tensor_shape_mismatch_names_the_tensor(tmp_path: Path, small_vae: MelVAE):
    record = checkpoint_record(small_vae, {})
    record["state_dict"]["to_moments.weight"] = torch.zeros(3, 3)
    path = tmp_path / "shape.pt"
    torch.save(record, path)
    message = _one_line_error(path)
    assert "to_moments.weight" in message and "[3, 3]" in message


def test_spectrogram_settings_are_compared_not_assumed(saved: Path, small_vae: MelVAE):
    same_shapes = SpectrogramSettings(**{**small_vae.settings.to_dict(), "f_min": 30.0})
    message = _one_line_error(saved, expected_settings=same_shapes)
    assert "f_min: 0.0 != 30.0" in message
    assert load_model(saved, "cpu", expected_settings=small_vae.settings).settings == small_vae.settings


def test_the_train_schema_builds_the_model_with_the_same_sealed_hashable_types(tmp_path: Path):
    overrides = ["dataset=demo", "name=x", "model.latent_dim=8", "model.channels=[4,8,8]", "spectrogram.n_mels=64"]
    cfg = to_train_config(compose_config("train", overrides, TrainConfig))
    assert type(cfg.model) is ModelHyperparameters and type(cfg.spectrogram) is SpectrogramSettings
    vae = MelVAE(cfg.spectrogram, cfg.model)
    assert vae.to_moments.out_channels == 2 * 8 and vae.n_mels == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.spectrogram.n_mels = 80
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.latent_dim = 16
    same = SpectrogramSettings(n_mels=64)
    assert same == cfg.spectrogram and hash(same) == hash(cfg.spectrogram)
    before = mel_filterbank.cache_info().hits
    assert mel_filterbank(same) is mel_filterbank(cfg.spectrogram)  # one cache entry for equal settings
    assert mel_filterbank.cache_info().hits > before

    # The checkpoint sections keep the keys they always had, so the shipped model reads as before.
    shipped = torch.load(resolve_checkpoint("default"), weights_only=True)
    record = checkpoint_record(vae, {})
    assert record["spectrogram"].keys() == shipped["spectrogram"].keys()
    assert record["hyperparameters"] == {"latent_dim": 8, "channels": [4, 8, 8], "residual_blocks": 1}
    assert SpectrogramSettings.from_dict(shipped["spectrogram"]) == SpectrogramSettings()
    record["hyperparameters"]["latent_dim"] = 0
    torch.save(record, tmp_path / "zero.pt")
    assert "model.latent_dim=0 is not allowed" in _one_line_error(tmp_path / "zero.pt")


def test_shipped_default_model_loads_and_is_small():
    loaded = load_model("default", "cpu", expected_settings=SpectrogramSettings())
    assert loaded.path.stat().st_size <= 8 * 1024 * 1024
    record = loaded.training
    for key in (
        "dataset",
        "epochs",
        "final_train_loss",
        "final_validation_loss",
        "wall_time_s",
        "sda_version",
        "torch_version",
        "config",
        "command",
    ):
        assert key in record, key
    assert {"file_count", "total_seconds", "content_hash"} <= set(record["dataset"])
    assert "dataset=demo" in record["command"]
    # format 3: the time-resolved model; since format 2 also the training windows' latents, the
    # training audio's index and the model's renditions
    assert torch.load(loaded.path, weights_only=True)["format_version"] == 3
    summary = loaded.summary
    assert summary is not None and summary.novelty is not None and summary.renditions is not None
    assert len(summary) == len(summary.renditions) == record["dataset"]["train_windows"]
    assert summary.latents.shape == (len(summary), loaded.latent_dim)
    assert len(summary.files) == record["dataset"]["train_files"]


def test_a_checkpoint_is_never_overwritten_unless_asked(saved, small_vae, tmp_path):
    with pytest.raises(OutputError, match="already exists"):
        save_checkpoint(small_vae, {"note": "second"}, saved)
    assert load_model(saved).training["note"] == "test"
    save_checkpoint(small_vae, {"note": "second"}, saved, replace=True)
    assert load_model(saved).training["note"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name], "no temporary file left"


def test_the_sampling_prior_moves_samples_not_reconstructions(small_vae: MelVAE):
    """After `set_prior`, standard-normal latents decode as draws from the given Gaussian over
    the latent grids, while encode -> decode still reconstructs exactly as the bare decoder."""
    size = small_vae.latent_size
    g = torch.Generator().manual_seed(0)
    factor = torch.randn(size, size, generator=g) / size**0.5
    mean, covariance = torch.randn(size, generator=g), factor @ factor.T + 0.1 * torch.eye(size)
    log_mel = torch.rand(4, small_vae.n_mels, small_vae.frames, generator=g) * 3
    small_vae.eval()
    with torch.no_grad():
        before = small_vae.decode_grid(small_vae.posterior(log_mel)[0])
        small_vae.set_prior(mean, covariance)
        z, _ = small_vae.encode(log_mel)
        assert torch.allclose(small_vae.decode_normalized(z), before, atol=1e-5)
        draws = torch.randn(20000, size, generator=g)
        grids = small_vae.prior_mean + draws @ small_vae.prior_scale.T
    assert torch.allclose(grids.mean(dim=0), mean, atol=0.05)
    assert torch.allclose(torch.cov(grids.T), covariance, atol=0.05)


def _format_1_checkpoint(path: Path) -> tuple[Path, GlobalLatentVAE]:
    """A checkpoint as sda wrote it before format 3: one latent vector per window."""
    torch.manual_seed(0)
    vae = GlobalLatentVAE(SpectrogramSettings(), GlobalLatentHyperparameters(latent_dim=8, channels=(4, 8, 8)))
    vae.set_normalization(torch.full((vae.n_mels,), 2.0), torch.ones(vae.n_mels))
    record = {
        "format": "sda-checkpoint",
        "format_version": 1,
        "hyperparameters": {"latent_dim": 8, "channels": [4, 8, 8]},
        "spectrogram": SpectrogramSettings().to_dict(),
        "training": {"note": "format 1"},
        "state_dict": vae.state_dict(),
    }
    torch.save(record, path)
    return path, vae.eval()


@pytest.mark.parametrize("version", [1, 2])
def test_a_checkpoint_of_the_previous_architecture_still_loads_and_renders(tmp_path: Path, version: int):
    path, original = _format_1_checkpoint(tmp_path / "old.pt")
    record = torch.load(path, weights_only=True)
    record["format_version"] = version
    if version == 2:
        record["training_summary"] = None  # format 2 carries the section (None: saved without one)
    torch.save(record, path)
    loaded = load_model(path, "cpu")
    assert isinstance(loaded.vae, GlobalLatentVAE) and loaded.latent_dim == 8
    z = torch.randn(3, 8)
    assert torch.equal(loaded.vae.decode(z), original.decode(z))
    result = GenerationPipeline(loaded, GenerationConfig(duration_s=1.0, device="cpu")).generate([5])[0]
    assert result.frames == 48000 and np.isfinite(result.audio).all() and np.abs(result.audio).max() > 0.5


def test_old_hyperparameters_under_the_new_format_are_one_line(tmp_path: Path):
    path, _ = _format_1_checkpoint(tmp_path / "old.pt")
    record = torch.load(path, weights_only=True)
    record["format_version"] = CHECKPOINT_FORMAT_VERSION
    record["training_summary"] = None
    torch.save(record, path)
    assert "expected ['channels', 'latent_dim', 'residual_blocks']" in _one_line_error(path)
