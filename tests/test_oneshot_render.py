"""`chunking=oneshot` with the shipped model: one window per output, reconstructed from its start,
ending where its sound does (at most duration_s and one window), the same in any batch, with
every stereo and export option; and through the real command: sweeps, resume, reproduce, the
disk estimate and the report's kit view."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from sda.config import (
    OPTIONS,
    GenerationConfig,
    MonoStereo,
    Normalize,
    OneshotChunking,
    PhaseConfig,
    WavExport,
)
from sda.dsp.spectrogram import MAX_WINDOW_S
from sda.outputs import save_result, verify_output
from sda.pipeline import GenerationPipeline
from sda.runner import estimate_output_bytes
from tests.helpers import assert_batch_consistency, compose_run, read_manifest, sda_run

pytestmark = pytest.mark.usefixtures("one_thread")


def oneshot_config(
    duration_s: float = 1.0, stereo: str = "mono", rate: int = 48000, batch_size: int = 0, **export
) -> GenerationConfig:
    return GenerationConfig(
        duration_s=duration_s,
        device="cpu",
        batch_size=batch_size,
        chunking=OneshotChunking(),
        stereo=OPTIONS["stereo"][stereo](),
        export=WavExport(sample_rate=rate, **export),
        phase=PhaseConfig(iterations=4),
    )


@pytest.mark.parametrize("rate, duration_s", [(44100, 0.4), (48000, 0.05), (96000, 30.0), (48000, 30.0)])
def test_a_one_shot_is_at_most_duration_s_and_one_window_long_and_ends_at_zero(shipped, rate, duration_s):
    results = GenerationPipeline(shipped, oneshot_config(duration_s, rate=rate)).generate([0, 1])
    longest = min(round(duration_s * rate), rate)  # the shipped model's window is 1 s
    for result in results:
        assert 0 < result.frames <= longest
        assert np.all(result.audio[:, -1] == 0.0), "the fade ends at zero: no click"
        assert result.metrics.peak_dbfs == pytest.approx(-1.0, abs=1e-4)


def test_the_one_shot_of_a_seed_is_its_own_and_another_seed_sounds_different(shipped):
    pipeline = GenerationPipeline(shipped, oneshot_config(0.5))
    first, other = pipeline.generate([5, 6])
    again = pipeline.generate([5])[0]
    assert np.array_equal(first.audio, again.audio) and first.frames == again.frames
    n = min(first.frames, other.frames)
    assert np.abs(first.audio[:, :n] - other.audio[:, :n]).max() > 0.05


@pytest.mark.determinism
@pytest.mark.parametrize("stereo, normalize", [("mono", "peak"), ("mid_side", "loudness"), ("dual_seed", "loudness")])
def test_each_one_shot_is_the_same_alone_and_in_a_batch(shipped, stereo, normalize):
    batch = GenerationPipeline(shipped, oneshot_config(0.6, stereo, batch_size=4, normalize=Normalize(normalize)))
    alone = GenerationPipeline(shipped, oneshot_config(0.6, stereo, batch_size=1, normalize=Normalize(normalize)))
    seeds = [3, 4, 5, 6]
    batched = batch.generate(seeds)
    assert batch.last_batch_sizes == [4]
    assert_batch_consistency(
        lambda s: [(r.audio, r.frames) for r in alone.generate(s)],
        seeds,
        batch_output=[(r.audio, r.frames) for r in batched],
        indices=(0, 3),
    )
    assert {r.channels for r in batched} == {OPTIONS["stereo"][stereo].CHANNELS}


def test_the_sidecar_says_what_a_one_shots_length_means(shipped, tmp_path):
    [result] = GenerationPipeline(shipped, oneshot_config(0.3)).generate([1])
    saved = save_result(result, tmp_path)
    length = saved.record["length"]
    assert length["frames"] == saved.record["file"]["frames"] == result.frames
    assert length["seconds"] == pytest.approx(result.frames / 48000)
    assert length["rule"].startswith("oneshot: the hit's own length") and "at most duration_s=0.3 s" in length["rule"]
    assert saved.record["duration_s"] == 0.3
    assert verify_output(saved.sidecar_path).ok
    texture = GenerationConfig(duration_s=0.3, device="cpu", stereo=MonoStereo())
    assert texture.chunking.length_rule(0.3) == "exactly duration_s=0.3 s: round(duration_s * sample_rate) frames"


def test_the_disk_estimate_counts_a_one_shot_at_its_longest():
    hits = compose_run("chunking=oneshot", "duration_s=1", "count=1000")
    assert estimate_output_bytes(hits) == 1000 * (48000 * 3 + 16_384)
    capped = compose_run("chunking=oneshot", "duration_s=600", "count=1000")
    assert estimate_output_bytes(capped) == 1000 * (round(MAX_WINDOW_S * 48000) * 3 + 16_384)
    assert estimate_output_bytes(compose_run("duration_s=600")) == round(600 * 48000) * 3 + 16_384


def test_one_shot_options_are_checked_in_one_line():
    for override, allowed in [("chunking.silence_db=-10", "[-120, -20]"), ("chunking.fade_ms=0", "(0, 200]")]:
        with pytest.raises(Exception) as info:
            compose_run("chunking=oneshot", override)
        assert allowed in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_a_one_shot_sweep_resumes_reproduces_and_reports_a_kit(tmp_path):
    folder = tmp_path / "kit"
    common = ["chunking=oneshot", "duration_s=0.5", "stereo=mid_side", "export=flac", "device=cpu"]
    sweep = ["-m", *common, "seed=0,1,2", "export.normalize=loudness", "phase.iterations=4"]
    done = sda_run(*sweep, f"hydra.sweep.dir={folder}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_manifest(folder)
    assert [r["status"] for r in rows] == ["done"] * 3
    sidecars = sorted(folder.glob("*/gen_*.json"))
    frames = []
    for sidecar in sidecars:
        record = json.loads(sidecar.read_text())
        audio, rate = sf.read(str(sidecar.with_suffix(".flac")), always_2d=True)
        assert audio.shape == (record["length"]["frames"], 2) and audio.shape[0] <= 24000
        assert record["level"]["normalize"] == "loudness"
        frames.append(audio.shape[0])
    for row in rows:
        assert row["chunking"] == "oneshot" and row["waveform"].endswith("_waveform.png") and row["spectrogram"] == ""
        assert float(row["length_s"]) == pytest.approx(int(row["frames"]) / 48000)
        assert row["true_peak_dbtp"] and float(row["true_peak_dbtp"]) <= -1.0
    page = (folder / "index.html").read_text()
    assert page.count('<tr class="hit"') == 3 and 'id="kit-player"' in page

    again = sda_run(f"resume={folder}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sda: 0 done / 3 skipped / 0 failed" in again.stdout + again.stderr

    original = json.loads(sidecars[1].read_text())
    made = sda_run(f"reproduce={sidecars[1]}", f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    [copy] = (tmp_path / "again").glob("gen_*.json")
    record = json.loads(copy.read_text())
    assert record["identity"] == original["identity"]
    assert record["file"]["sha256"] == original["file"]["sha256"] and record["file"]["frames"] == frames[1]
    assert "exactly" in made.stdout + made.stderr
    assert math.isfinite(record["level"]["integrated_lufs"])
