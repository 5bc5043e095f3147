"""The sweep the report tests read, made once for the package.

Made for real: `python -m sda.run -m` with a tiny untrained checkpoint (two jobs, whose end
writes the report through the callback), then two more job folders written with the real
writers (save_result, JobOutcome): a 1 kHz sine, a DC-offset item, a failed item, a truncated
output and an output whose audio was deleted. The callback's `_finish` then runs again in this
process, as a resumed sweep's would.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sda import GenerationConfig, summary
from sda.config import FlacExport
from sda.dsp.spectrogram import SpectrogramSettings
from sda.model import MelVAE, ModelHyperparameters, save_checkpoint
from sda.outputs import output_identity, save_result
from sda.runner import ItemOutcome
from tests.helpers import done_item, job_folder, read_manifest, run_sda, synthetic_result, write_job_outcome

FAILED_SEED = 13
FAILED_REASON = "silent audio (peak -inf dBFS)"
SINE_HZ = 1000.0


def _add_synthetic_job(sweep: Path) -> dict[str, Path]:
    """Job 2: a half-second 1 kHz sine then silence (yellow), a DC-offset noise (red), one failed item."""
    job = job_folder(sweep, "2", ["export=flac"])
    config = GenerationConfig(duration_s=1.0, device="cpu", export=FlacExport(sample_rate=44100, bit_depth=16))
    sr = config.export.sample_rate
    t = np.arange(sr) / sr
    sine = np.where(t < 0.5, 0.5 * np.sin(2 * math.pi * SINE_HZ * t), 0.0)[None]
    noise = (0.06 + 0.1 * np.random.default_rng(0).standard_normal(sr))[None]
    sine_saved = save_result(synthetic_result(sine, 100, config), job)
    noise_saved = save_result(synthetic_result(noise, 101, config), job)
    failed = ItemOutcome(FAILED_SEED, output_identity(config, FAILED_SEED, "5" * 64), "failed", FAILED_REASON)
    write_job_outcome(job, [done_item(sine_saved), done_item(noise_saved), failed])
    return {"sine": sine_saved.audio_path, "noise": noise_saved.audio_path}


def _add_broken_job(sweep: Path) -> dict[str, Path]:
    """Job 3: one output truncated after it was written (a killed copy), one whose audio is gone."""
    job = job_folder(sweep, "3", [])
    config = GenerationConfig(duration_s=1.0, device="cpu")
    noise = 0.3 * np.random.default_rng(1).standard_normal((1, 48000))
    truncated = save_result(synthetic_result(noise, 200, config), job)
    missing = save_result(synthetic_result(noise[:, ::-1].copy(), 201, config), job)
    data = truncated.audio_path.read_bytes()
    truncated.audio_path.write_bytes(data[: len(data) // 2])
    missing.audio_path.unlink()
    write_job_outcome(job, [done_item(truncated), done_item(missing)])
    return {"truncated": truncated.audio_path, "missing": missing.audio_path}


@pytest.fixture(scope="package")
def sweep(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    vae = MelVAE(SpectrogramSettings(), ModelHyperparameters(latent_dim=8, channels=(4, 8, 8)))
    checkpoint = save_checkpoint(vae, {"note": "untrained, for tests"}, root / "tiny.pt")
    folder = root / "sweep"
    proc = run_sda(
        "run",
        "-m",
        "stereo=dual_seed,mono",
        "count=2",
        "duration_s=1",
        "device=cpu",
        "phase.iterations=4",
        f"model.checkpoint={checkpoint}",
        f"hydra.sweep.dir={folder}",
        cwd=root,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first_manifest = read_manifest(folder)
    files = {**_add_synthetic_job(folder), **_add_broken_job(folder)}
    summary.write_report(folder, summary.job_folders(folder, multirun=True))
    return {
        "folder": folder,
        "files": files,
        "first_manifest": first_manifest,
        "stderr": proc.stderr,
        "failed_seed": FAILED_SEED,
        "failed_reason": FAILED_REASON,
        "sine_hz": SINE_HZ,
    }
