"""Training through the real command: it learns, it resumes exactly, bad input fails cleanly;
and on a GPU, when there is one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sda.config import EvaluateConfig, TrainConfig, to_evaluate_config, to_train_config
from sda.data.folder import load_audio_folder
from sda.data.windows import Augmentation, WindowSampler, split_by_file
from sda.dsp.spectrogram import SpectrogramSettings, decompress, log_mel
from sda.errors import SdaError
from sda.evaluation import evaluate_model, untrained_like
from sda.model import MelVAE, ModelHyperparameters, load_model
from sda.preflight import compose_config
from sda.training import STATE_FORMAT_VERSION, TrainingResult, _loss_terms, train_model
from sda.training_record import EpochRecord, TrainingRecord
from tests.helpers import TINY_MODEL, has_cuda, make_tiny_dataset, run_sda


def reconstruction_l1(vae, windows: torch.Tensor) -> float:
    with torch.no_grad():
        target = log_mel(windows, vae.settings)
        mu, _ = vae.encode(target)
        return float((vae.decode(mu) - target).abs().mean())


@pytest.mark.slow
def test_training_command_makes_a_model_that_reconstructs_better_than_untrained(tiny_dataset: Path, tmp_path: Path):
    # On the CPU, whose random streams the margin below was measured with (a GPU run draws others).
    # Without augmentation: varispeed moves these pure tones into mel bins where none of the five
    # training tones has energy (per-bin normalization makes those errors dominate), and 80 steps
    # on 15 windows do not get past that; real corpora train with it (the evaluation suite).
    args = [
        f"dataset.path={tiny_dataset}",
        "name=tiny",
        "max_epochs=40",
        "device=cpu",
        "augmentation.enabled=false",
        *TINY_MODEL,
    ]
    done = run_sda("train", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    model_path = tmp_path / "models" / "tiny.pt"
    assert done.stdout.strip().splitlines()[-1] == str(model_path)
    assert "windows/s" in done.stderr and "saved" in done.stderr
    assert not (tmp_path / "models" / "tiny.train").exists(), "training state is removed once the model is saved"

    model = load_model(model_path)
    record = TrainingRecord.from_dict(model.training)
    assert record.epochs == 40 and len(record.history) == 40 and record.dataset.file_count == 6
    assert record.config["name"] == "tiny" and "dataset.path=" in record.command
    assert record.config["model"] == {"latent_dim": 8, "channels": [32, 32, 32], "residual_blocks": 1}
    assert record.config["model"] == model.vae.hyper.to_dict()
    assert record.windows_per_second > 0 and record.wall_time_s > 0
    assert 0 <= record.active_latent_dims <= 8

    # Its training windows (the held-out tone is a pitch none of the five has: not a fair ask of 15 windows).
    clips, _ = split_by_file(list(load_audio_folder(tiny_dataset).clips), 0.15, 0)
    windows = WindowSampler(clips, 48000, 24000, -60.0, Augmentation.none()).fixed_windows()
    trained = reconstruction_l1(model.vae, windows)
    untrained = reconstruction_l1(untrained_like(model, seed=0).vae, windows)
    # A mean-spectrum decoder already scores well on L1; the tiny model takes it ~15 % lower (measured).
    assert trained < 0.9 * untrained, (trained, untrained)


def _train_cfg(dataset: Path, models: Path, *extra: str) -> TrainConfig:
    return to_train_config(
        compose_config(
            "train", [f"dataset.path={dataset}", "name=det", f"models_dir={models}", *TINY_MODEL, *extra], TrainConfig
        )
    )


def _same_weights(a: TrainingResult, b: TrainingResult) -> bool:
    first, second = (load_model(r.model_path).vae.state_dict() for r in (a, b))
    return all(torch.equal(first[k], second[k]) for k in first)


def test_standard_normal_latents_are_drawn_from_the_training_windows_aggregate_posterior(tiny_dataset, tmp_path):
    result = train_model(_train_cfg(tiny_dataset, tmp_path, "max_epochs=2", "device=cpu"), show_progress=False)
    vae = load_model(result.model_path).vae
    clips, _ = split_by_file(list(load_audio_folder(tiny_dataset).clips), 0.15, 0)  # the run's split
    windows = WindowSampler(clips, 48000, 48000 // 8, -60.0, Augmentation.none()).fixed_windows()
    assert result.record.prior_windows == windows.shape[0] > 20
    with torch.no_grad():
        mu = vae.posterior(log_mel(windows, vae.settings))[0].flatten(1).double()
    assert torch.allclose(vae.prior_mean.double(), mu.mean(dim=0), atol=1e-5)
    # the prior's covariance holds the posterior means' covariance (shrunk by 10 % to its diagonal)
    covariance = (vae.prior_scale @ vae.prior_scale.T).double()
    off_diagonal = ~torch.eye(vae.latent_size, dtype=torch.bool)
    assert torch.allclose(covariance[off_diagonal], 0.9 * torch.cov(mu.T)[off_diagonal], atol=1e-5)
    assert (covariance.diagonal() > torch.cov(mu.T).diagonal()).all(), "plus the posterior's own variance"


def test_training_is_deterministic_for_a_seed_on_cpu(tiny_dataset: Path, tmp_path: Path):
    args = ("max_epochs=3", "device=cpu")
    first = train_model(_train_cfg(tiny_dataset, tmp_path / "a", *args), show_progress=False)
    second = train_model(_train_cfg(tiny_dataset, tmp_path / "b", *args), show_progress=False)
    other = train_model(_train_cfg(tiny_dataset, tmp_path / "c", *args, "seed=1"), show_progress=False)
    assert _same_weights(first, second)
    assert not _same_weights(first, other)
    assert first.record.machine.device == "cpu"


class _Interrupted(Exception):
    """Stands in for a kill during an epoch after the state was last saved."""


def _straight_and_resumed(dataset: Path, tmp_path: Path, device: str) -> tuple[TrainingResult, TrainingResult]:
    """Four epochs in one go, and the same run stopped in epoch 3 (state saved after epoch 2:
    TINY_MODEL saves every 2 epochs) then resumed to the end."""
    args = ("max_epochs=4", f"device={device}")
    straight = train_model(_train_cfg(dataset, tmp_path / "straight", *args), show_progress=False)

    def stop_in_epoch_3(row: EpochRecord) -> None:
        if row.epoch == 3:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_model(_train_cfg(dataset, tmp_path / "resumed", *args), on_epoch=stop_in_epoch_3, show_progress=False)
    assert (tmp_path / "resumed" / "det.train" / "state.pt").exists()
    assert not (tmp_path / "resumed" / "det.pt").exists()
    with pytest.raises(SdaError, match=r"resume=true: model.latent_dim=16 differs from the interrupted run's 8"):
        train_model(_train_cfg(dataset, tmp_path / "resumed", *args, "resume=true", "model.latent_dim=16"))
    resumed = train_model(_train_cfg(dataset, tmp_path / "resumed", *args, "resume=true"), show_progress=False)
    assert not (tmp_path / "resumed" / "det.train").exists()
    return straight, resumed


def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_weights_and_record(tiny_dataset: Path, tmp_path):
    straight, resumed = _straight_and_resumed(tiny_dataset, tmp_path, "cpu")
    assert _same_weights(straight, resumed)
    assert resumed.record.history == straight.record.history and len(straight.record.history) == 4
    assert resumed.record.windows_seen == straight.record.windows_seen > 0
    assert (resumed.record.best_epoch, resumed.record.best_validation_loss) == (
        straight.record.best_epoch,
        straight.record.best_validation_loss,
    )


def test_a_training_state_of_an_older_format_is_refused_in_one_line_and_kept(tiny_dataset: Path, tmp_path: Path):
    state = tmp_path / "models" / "det.train" / "state.pt"
    state.parent.mkdir(parents=True)
    torch.save({"format_version": 1, "epoch": 10, "model": {"w": torch.zeros(2)}}, state)
    with pytest.raises(SdaError) as info:
        train_model(_train_cfg(tiny_dataset, tmp_path / "models", "resume=true"), show_progress=False)
    message = str(info.value)
    assert "\n" not in message and "format 1" in message and "older sda" in message
    assert f"format {STATE_FORMAT_VERSION} only" in message
    assert state.exists() and not (tmp_path / "models" / "det.pt").exists()


def test_the_shipped_models_record_reads_through_training_record():
    stored = load_model("default").training
    record = TrainingRecord.from_dict(stored)
    written = record.to_dict()
    # every field it holds is a field of TrainingRecord, and it holds them all (format 3)
    assert written == stored
    assert record.prior_windows > record.dataset.train_windows > 0  # the prior: windows 1/8 apart
    assert 0 < record.dataset.train_window_files < record.dataset.file_count == 48
    assert record.epochs == len(record.history) > 0
    assert record.history[record.best_epoch - 1].validation_loss == record.best_validation_loss
    assert record.versions["torch_version"] and record.machine.device == "cpu"
    assert record.summary("default.pt").startswith("saved default.pt | 48 files, 195.2 s | ")
    # a record that lacks fields reads too, as unknown figures
    sparse = TrainingRecord.from_dict({"epochs": 3, "dataset": {"file_count": 2}})
    assert (sparse.epochs, sparse.dataset.file_count, sparse.history) == (3, 2, [])


def test_training_and_evaluation_default_to_or_accept_device_auto():
    train = to_train_config(compose_config("train", ["dataset=demo", "name=x"], TrainConfig))
    evaluate = to_evaluate_config(compose_config("evaluate", ["device=auto"], EvaluateConfig))
    assert train.device == "auto" == evaluate.device


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


def _bad_dataset(tmp_path: Path, kind: str) -> str:
    """A dataset folder of `kind` under `tmp_path`, as `dataset.path`'s value."""
    folder = tmp_path / kind
    if kind == "missing":
        return str(folder)
    if kind == "unset":
        return ""
    folder.mkdir()
    if kind == "unreadable":
        (folder / "notes.txt").write_text("not audio")
        (folder / "broken.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    elif kind == "silent":
        sf.write(folder / "hiss.wav", np.full(14400, 1e-4, dtype=np.float32), 48000, subtype="FLOAT")
    return str(folder)


# One test per case (each starts sda.train): pytest-xdist spreads them over the cores.
@pytest.mark.parametrize(
    "kind, expect, code, listed",
    [
        ("missing", "does not exist", 1, []),
        ("empty", "empty", 1, []),
        # each skipped file is listed with its reason
        ("unreadable", "2 files", 1, ["notes.txt", "broken.wav"]),
        ("silent", "no usable", 1, ["skipping hiss.wav: silent: its loudest 50 ms is at -80.0 dBFS"]),
        ("unset", "dataset.path", 2, []),
    ],
)
def test_bad_datasets_fail_with_one_line_and_leave_no_model(tmp_path: Path, kind, expect, code, listed):
    stderr = _fails_with_one_line(tmp_path, f"dataset.path={_bad_dataset(tmp_path, kind)}", expect=expect, code=code)
    assert all(text in stderr for text in listed), stderr


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


@pytest.mark.slow
def test_file_names_that_are_not_utf8_are_trained_on_and_logged_without_a_logging_error(tmp_path: Path):
    folder = make_tiny_dataset(tmp_path / "names", files=3)
    latin1 = os.fsdecode(b"caf\xe9 tone.wav")
    (folder / "tone_0.wav").rename(folder / latin1)
    (folder / os.fsdecode(b"broken \xff.wav")).write_bytes(b"RIFF" + bytes(64))
    done = run_sda("train", f"dataset.path={folder}", "name=names", "max_epochs=1", *TINY_MODEL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Logging error" not in done.stderr and "Traceback" not in done.stderr
    assert "skipping broken \\xff.wav: not readable as audio" in done.stderr
    (log_file,) = (tmp_path / "outputs" / "train" / "names").glob("*/*/train.log")  # Hydra's UTF-8 job log
    assert "skipping broken \\xff.wav" in log_file.read_text(encoding="utf-8")
    record = TrainingRecord.from_dict(load_model(tmp_path / "models" / "names.pt").training)
    assert record.dataset.file_count == 3
    assert record.dataset.skipped == [{"path": "broken \\xff.wav", "reason": record.dataset.skipped[0]["reason"]}]
    assert record.dataset.content_hash == load_audio_folder(folder).fingerprint.content_hash


# --------------------------------------------------------------------------------------------
# GPU (one short check each; they run where CUDA is present)

needs_cuda = pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_cuda_training_is_reproducible_and_resumes_to_exactly_the_uninterrupted_weights(tiny_dataset, tmp_path):
    straight, resumed = _straight_and_resumed(tiny_dataset, tmp_path, "cuda")
    assert straight.record.machine.device.startswith("cuda")
    assert _same_weights(straight, resumed)
    assert resumed.record.history == straight.record.history
    assert straight.record.windows_per_second > 0
    assert all(np.isfinite(row.validation_loss) for row in straight.record.history)


RENDER_WITHOUT_CUDA = """
import sys
import numpy as np
import torch
from sda import GenerationConfig, GenerationPipeline, load_model
assert not torch.cuda.is_available()
pipeline = GenerationPipeline(load_model(sys.argv[1], "cpu"), GenerationConfig(duration_s=1.0, device="cpu"))
result = pipeline.generate([3])[0]
print(result.frames, result.sample_rate, float(np.abs(result.audio).max()), bool(np.isfinite(result.audio).all()))
"""


@pytest.mark.gpu
@needs_cuda
def test_device_auto_trains_on_the_gpu_and_the_model_evaluates_there_and_renders_without_cuda(tiny_dataset, tmp_path):
    done = run_sda("train", f"dataset.path={tiny_dataset}", "name=gpu", "max_epochs=3", *TINY_MODEL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    model_path = tmp_path / "models" / "gpu.pt"
    assert TrainingRecord.from_dict(load_model(model_path).training).machine.device.startswith("cuda")

    evaluation = evaluate_model(
        to_evaluate_config(
            compose_config(
                "evaluate",
                [
                    f"model.checkpoint={model_path}",
                    "dataset=folder",
                    f"dataset.path={tiny_dataset}",
                    "device=cuda",
                    "generated_clips=2",
                    "clip_s=1.0",
                ],
                EvaluateConfig,
            )
        ),
        tmp_path,
    )
    model_figures = evaluation.figures["model"]
    assert model_figures["frechet_distance"] is not None and model_figures["reconstruction_log_mel_l1"] is not None
    # Every figure that applies to a subject (None where one does not) is a finite number.
    assert all(np.isfinite(v) for figures in evaluation.figures.values() for v in figures.values() if v is not None)

    hidden = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    render = subprocess.run(
        [sys.executable, "-c", RENDER_WITHOUT_CUDA, str(model_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=hidden,
        cwd=tmp_path,
    )
    assert render.returncode == 0, render.stderr[-2000:]
    frames, rate, peak, finite = render.stdout.split()
    assert int(frames) == int(rate) and finite == "True"
    assert 10 ** (-1.0001 / 20) <= float(peak) <= 10 ** (-1 / 20)  # every render peaks at -1 dBFS


def test_an_unstable_decoder_gives_finite_spectral_figures_the_record_can_hold():
    # A corpus whose validation windows lie far outside the training statistics (measured: the
    # sonic-pi textures) made the decoder's log-mel reach past float32's expm1, and the finished
    # training died writing an inf into its JSON record. The spectral figures are capped instead.
    torch.manual_seed(0)
    settings = SpectrogramSettings(n_fft=1024, hop_length=256, n_mels=64, window_s=0.5)
    vae = MelVAE(settings, ModelHyperparameters(latent_dim=8, channels=(4, 8, 8)))
    vae.decoder[-1].bias.data.fill_(200.0)  # normalized outputs of ~200: log-mel far past 88.7
    windows = torch.randn(3, settings.window_samples) * 0.1
    log_mels = log_mel(windows, settings)
    assert torch.isinf(decompress(vae.decode(vae.encode(log_mels)[0]))).any()  # uncapped: inf
    reconstruction, kl, _, convergence = _loss_terms(vae, log_mels, None, sample=False, spectral_weight=1.0)
    assert torch.isfinite(convergence).all() and torch.isfinite(reconstruction).all() and torch.isfinite(kl).all()
    assert (convergence > 1.0).all()  # still scored as the failure it is


def test_training_in_a_process_that_generated_first_can_backpropagate_the_spectral_loss():
    # Generation runs in inference mode; the mel pseudo-inverse it caches is also the spectral
    # loss's, which autograd must save: a cached inference tensor made every later training step
    # in that process fail ("Inference tensors cannot be saved for backward").
    from sda import GenerationConfig, GenerationPipeline
    from sda.dsp.phase import mel_pseudo_inverse

    mel_pseudo_inverse.cache_clear()
    model = load_model("default")
    GenerationPipeline(model, GenerationConfig(duration_s=0.5, device="cpu")).generate([0])
    torch.manual_seed(0)
    vae = MelVAE(model.settings, ModelHyperparameters(latent_dim=4, channels=(8, 8, 8)))
    log_mels = log_mel(torch.randn(2, model.settings.window_samples) * 0.1, model.settings)
    reconstruction, kl, _, _ = _loss_terms(vae, log_mels, None, sample=False, spectral_weight=1000.0)
    (reconstruction.sum() + kl.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.decoder.parameters())
