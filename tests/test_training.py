"""Training through the real command: it learns, it resumes exactly, bad input fails cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sda.config import TrainConfig, to_train_config
from sda.data.folder import load_audio_folder
from sda.data.windows import Augmentation, WindowSampler
from sda.dsp.spectrogram import log_mel
from sda.evaluation import untrained_like
from sda.model import load_model
from sda.preflight import compose_config
from sda.training import train_model
from tests.helpers import TINY_MODEL, make_tiny_dataset, run_sda, tone_file


def reconstruction_l1(vae, windows: torch.Tensor) -> float:
    with torch.no_grad():
        target = log_mel(windows, vae.settings)
        mu, _ = vae.encode(target)
        return float((vae.decode(mu) - target).abs().mean())


@pytest.mark.slow
def test_training_command_makes_a_model_that_reconstructs_better_than_untrained(tiny_dataset: Path, tmp_path: Path):
    done = run_sda("train", f"dataset.path={tiny_dataset}", "name=tiny", "max_epochs=40", *TINY_MODEL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    model_path = tmp_path / "models" / "tiny.pt"
    assert done.stdout.strip().splitlines()[-1] == str(model_path)
    assert "windows/s" in done.stderr and "saved" in done.stderr
    assert not (tmp_path / "models" / "tiny.train").exists(), "training state is removed once the model is saved"

    model = load_model(model_path)
    record = model.training
    assert record["epochs"] == 40 and record["dataset"]["file_count"] == 6
    assert record["config"]["name"] == "tiny" and "dataset.path=" in record["command"]
    assert record["windows_per_second"] > 0 and record["wall_time_s"] > 0
    assert 0 <= record["active_latent_dims"] <= 8

    windows = WindowSampler(
        list(load_audio_folder(tiny_dataset).clips), 48000, 24000, -60.0, Augmentation.none()
    ).fixed_windows()
    trained = reconstruction_l1(model.vae, windows)
    untrained = reconstruction_l1(untrained_like(model, seed=0).vae, windows)
    # A mean-spectrum decoder already scores well on L1; 40 epochs of a tiny model take it ~12 % lower.
    assert trained < 0.9 * untrained, (trained, untrained)


def _train_cfg(dataset: Path, models: Path, *extra: str) -> TrainConfig:
    return to_train_config(
        compose_config(
            "train", [f"dataset.path={dataset}", "name=det", f"models_dir={models}", *TINY_MODEL, *extra], TrainConfig
        )
    )


def test_training_is_deterministic_for_a_seed_on_cpu(tiny_dataset: Path, tmp_path: Path):
    first = train_model(_train_cfg(tiny_dataset, tmp_path / "a", "max_epochs=3"), show_progress=False)
    second = train_model(_train_cfg(tiny_dataset, tmp_path / "b", "max_epochs=3"), show_progress=False)
    other = train_model(_train_cfg(tiny_dataset, tmp_path / "c", "max_epochs=3", "seed=1"), show_progress=False)
    a, b, c = (load_model(r.model_path).vae.state_dict() for r in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_a_killed_training_resumes_to_exactly_the_uninterrupted_result(tiny_dataset: Path, tmp_path: Path):
    args = [f"dataset.path={tiny_dataset}", "name=r", "max_epochs=16", "threads=1", *TINY_MODEL]
    (tmp_path / "straight").mkdir()
    straight = run_sda("train", *args, cwd=tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]

    work = tmp_path / "killed"
    work.mkdir()
    state = work / "models" / "r.train" / "state.pt"
    process = subprocess.Popen(
        [sys.executable, "-m", "sda.train", *args], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists(), "the run ended before its first periodic checkpoint"
    assert not (work / "models" / "r.pt").exists(), "a killed run leaves no model where a good one is expected"

    again = run_sda("train", *args, cwd=work)
    assert again.returncode == 1 and "resume=true" in again.stderr  # refuses to silently start over
    resumed = run_sda("train", *args, "resume=true", cwd=work)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_model(tmp_path / "straight" / "models" / "r.pt").vae.state_dict()
    b = load_model(work / "models" / "r.pt").vae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _fails_with_one_line(tmp_path: Path, *args: str, expect: str, code: int = 1) -> str:
    done = run_sda("train", "name=bad", *TINY_MODEL, "max_epochs=1", *args, cwd=tmp_path)
    assert done.returncode == code, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line or line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert expect in errors[0]
    assert not (tmp_path / "models" / "bad.pt").exists()
    return done.stderr


@pytest.mark.slow
def test_bad_datasets_fail_with_one_line_and_leave_no_model(tmp_path: Path):
    _fails_with_one_line(tmp_path, f"dataset.path={tmp_path / 'missing'}", expect="does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails_with_one_line(tmp_path, f"dataset.path={empty}", expect="empty")

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "notes.txt").write_text("not audio")
    (unreadable / "broken.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    stderr = _fails_with_one_line(tmp_path, f"dataset.path={unreadable}", expect="2 files")
    assert "notes.txt" in stderr and "broken.wav" in stderr  # each skipped file is listed with its reason

    short = tmp_path / "short"
    tone_file(short / "blip.wav", 0.3, 440.0)
    _fails_with_one_line(tmp_path, f"dataset.path={short}", expect="no usable")

    _fails_with_one_line(tmp_path, "dataset.path=", expect="dataset.path", code=2)


@pytest.mark.slow
def test_corrupt_nan_multichannel_and_mixed_rate_files_are_handled(tmp_path: Path):
    folder = make_tiny_dataset(tmp_path / "mixed", files=4)
    (folder / "garbage.flac").write_bytes(b"fLaC" + bytes(500))
    nan_audio = np.random.default_rng(0).standard_normal((48000 * 2, 6)).astype(np.float32) * 0.1
    nan_audio[1000:1010] = np.nan
    sf.write(folder / "six_channels_with_nans.wav", nan_audio, 22050, subtype="FLOAT")
    done = run_sda("train", f"dataset.path={folder}", "name=mixed", "max_epochs=2", *TINY_MODEL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "garbage.flac" in done.stderr  # skipped with a warning, not a crash
    record = load_model(tmp_path / "models" / "mixed.pt").training
    assert record["dataset"]["file_count"] == 5
    assert [s["path"] for s in record["dataset"]["skipped"]] == ["garbage.flac"]


def test_an_existing_model_is_never_overwritten(tiny_dataset: Path, tmp_path: Path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "keep.pt").write_bytes(b"precious")
    done = run_sda("train", f"dataset.path={tiny_dataset}", "name=keep", *TINY_MODEL, cwd=tmp_path)
    assert done.returncode == 1 and "already exists" in done.stderr
    assert (tmp_path / "models" / "keep.pt").read_bytes() == b"precious"
