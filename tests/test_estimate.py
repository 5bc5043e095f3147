"""The plan before a sweep: files, audio and disk, and a wall time estimated from a throughput
measured on this device (a small cache file); `dry_run=true` prints it and makes nothing."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sda import estimate
from sda.config import DualSeedStereo, GenerationConfig, LatentInterpChunking, WavExport
from tests.helpers import sda_run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(estimate.CACHE_ENV, str(folder))
    return folder


CPU = torch.device("cpu")


def test_a_kind_never_measured_is_estimated_from_one_that_was_scaled_by_its_voices(cache):
    mono = GenerationConfig(duration_s=10)
    estimate.record_rate(CPU, mono, audio_s=1000, wall_s=10, source="sda.bench --end-to-end")
    assert estimate.best_rate(CPU, mono).scaled_to(mono) == pytest.approx(100)
    dual = GenerationConfig(duration_s=10, stereo=DualSeedStereo(), export=WavExport(sample_rate=96000))
    assert estimate.best_rate(CPU, dual).scaled_to(dual) == pytest.approx(50)  # two voices an output
    estimate.record_rate(CPU, dual, audio_s=600, wall_s=10, source="a run")
    assert estimate.best_rate(CPU, dual).scaled_to(dual) == pytest.approx(60)  # its own figure wins
    interp = GenerationConfig(chunking=LatentInterpChunking())
    assert estimate.best_rate(CPU, interp) is not None  # any kind, when nothing closer was measured
    recorded = json.loads(estimate.cache_path().read_text())
    assert list(recorded["devices"]) == [estimate.device_name(CPU)]


def test_an_unreadable_cache_is_ignored_and_replaced(cache):
    cache.mkdir()
    estimate.cache_path().write_text("{not json")
    assert estimate.best_rate(CPU, GenerationConfig()) is None
    estimate.record_rate(CPU, GenerationConfig(), audio_s=10, wall_s=1, source="a run")
    assert estimate.best_rate(CPU, GenerationConfig()).audio_s_per_s == pytest.approx(10)


def test_only_runs_long_enough_to_measure_record_their_throughput(cache):
    config = GenerationConfig(duration_s=10)
    assert estimate.record_run(CPU, config, made=3, wall_s=5, jobs_s=4) is None
    assert not estimate.cache_path().exists()
    rate = estimate.record_run(CPU, config, made=100, wall_s=80, jobs_s=75)
    assert rate is not None and rate.audio_s_per_s == pytest.approx(1000 / 80)


@pytest.mark.parametrize(
    "seconds, text", [(0.25, "0.25 s"), (45, "45 s"), (600, "10 min"), (5400, "1 h 30 min"), (27_600, "7 h 40 min")]
)
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert estimate.duration_text(seconds) == text


def test_dry_run_prints_the_plan_and_the_estimate_and_makes_nothing(tmp_path, cache, one_thread):
    # one_thread: the device name holds torch's thread count, as in the commands (one thread)
    # 100 audio s/s measured for mono: 2000 dual_seed files of 10 s take 20 000 s / 50 = 6 min 40 s.
    estimate.record_rate(CPU, GenerationConfig(duration_s=10), audio_s=1000, wall_s=10, source="sda.bench")
    proc = sda_run(
        "count=2000",
        "stereo=dual_seed",
        "export.sample_rate=96000",
        "device=cpu",
        "dry_run=true",
        "hydra.run.dir=night",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(
        "sda: plan: 2000 files in 1 job, 5 h 33 min of audio (crossfade dual_seed wav 96000 Hz), about 11.6 GB on disk"
    )
    assert lines[1].startswith(f"sda: estimate: about 7 min on {estimate.device_name(CPU)} (100.0 audio s/s measured")
    assert str(estimate.cache_path()) in lines[1]
    assert lines[2:] == ["sda: dry run: nothing rendered, nothing written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no output folder


def test_without_a_measurement_the_plan_says_how_to_get_one(tmp_path, cache):
    proc = sda_run("dry_run=true", "device=cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sda: estimate: none yet for cpu " in proc.stderr and "python -m sda.bench --end-to-end" in proc.stderr
    assert not (tmp_path / "outputs").exists()
    assert os.listdir(tmp_path) == []
