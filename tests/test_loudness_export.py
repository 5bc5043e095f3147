"""`export.normalize=loudness`: the files as written, read back with soundfile, reach their BS.1770
loudness target within 0.5 LU with the true peak at or under its ceiling, at every export rate
and bit depth; a target out of reach is met at the ceiling, and the sidecar says by how much it
fell short. `export.normalize=peak` stays what it was."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from sda.config import OPTIONS, ExportConfig, GenerationConfig, Normalize, OneshotChunking, PhaseConfig
from sda.dsp.loudness import loudness_lufs, true_peak
from sda.outputs import output_identity, save_result
from sda.pipeline import GenerationPipeline
from tests.helpers import FORMATS, compose_run

pytestmark = pytest.mark.usefixtures("one_thread")

RATES = (44100, 48000, 96000)


def export_config(format: str, bit_depth: int, rate: int, normalize: str, **level) -> ExportConfig:
    options = {"sample_rate": rate, "normalize": Normalize(normalize), **level}
    if format != "ogg":
        options["bit_depth"] = bit_depth
    return OPTIONS["export"][format](**options)


def read_back(path) -> tuple[torch.Tensor, int]:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(audio.T)), rate


def torchaudio_lufs(audio: torch.Tensor, rate: int) -> float:
    """torchaudio's own BS.1770 (its filters clamp at full scale: measured 20 dB down, added back)."""
    return float(torchaudio.functional.loudness(audio.double() * 0.1, rate)) + 20.0


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("format, bit_depth", [(f, b) for f, b, _, _ in FORMATS])
def test_files_reach_their_loudness_target_under_the_true_peak_ceiling(shipped, tmp_path, format, bit_depth, rate):
    export = export_config(format, bit_depth, rate, normalize="loudness", loudness_lufs=-26.0, true_peak_dbtp=-2.0)
    config = GenerationConfig(duration_s=0.6, device="cpu", export=export, phase=PhaseConfig(iterations=4))
    # A seed whose render can reach -26 LUFS under -2 dBTP (a crest factor under 24 dB: 15 dB for
    # seed 4 with the shipped model; its seed 11 is a pluck of 34 dB, out of reach).
    [result] = GenerationPipeline(shipped, config).generate([4])
    saved = save_result(result, tmp_path)

    audio, read_rate = read_back(saved.audio_path)
    assert read_rate == rate
    measured = loudness_lufs(audio, rate)
    assert measured == pytest.approx(-26.0, abs=0.5)
    assert torchaudio_lufs(audio, rate) == pytest.approx(-26.0, abs=0.5)
    assert 20 * math.log10(true_peak(audio)) <= -2.0
    level = saved.record["level"]
    assert level["normalize"] == "loudness" and level["target_lufs"] == -26.0
    assert level["true_peak_ceiling_dbtp"] == -2.0 and level["reached"] is True and level["shortfall_lu"] == 0.0
    assert level["integrated_lufs"] == pytest.approx(measured, abs=0.5)
    assert saved.record["file"]["true_peak_dbtp"] <= -2.0


@pytest.mark.parametrize("rate", RATES)
def test_a_target_out_of_reach_is_made_at_the_ceiling_and_the_shortfall_recorded(shipped, tmp_path, rate):
    export = export_config("flac", 16, rate, normalize="loudness", loudness_lufs=-8.0, true_peak_dbtp=-1.0)
    config = GenerationConfig(duration_s=1.0, device="cpu", export=export, phase=PhaseConfig(iterations=4))
    [result] = GenerationPipeline(shipped, config).generate([4])
    saved = save_result(result, tmp_path)

    audio, _ = read_back(saved.audio_path)
    peak_dbtp = 20 * math.log10(true_peak(audio))
    assert -1.05 < peak_dbtp <= -1.0, "made at the ceiling"
    level = json.loads(saved.sidecar_path.read_text())["level"]
    measured = loudness_lufs(audio, rate)
    assert level["reached"] is False
    assert level["shortfall_lu"] == pytest.approx(-8.0 - measured, abs=0.05)
    assert level["shortfall_lu"] > 1.0


def test_one_shots_are_levelled_over_their_own_length(shipped, tmp_path):
    # Hits shorter than a 400 ms gating block are measured in the block that holds them.
    export = export_config("wav", 24, 48000, normalize="loudness", loudness_lufs=-30.0)
    config = GenerationConfig(
        duration_s=0.2, device="cpu", chunking=OneshotChunking(), export=export, phase=PhaseConfig(iterations=4)
    )
    for result in GenerationPipeline(shipped, config).generate([0, 1, 2]):
        audio, rate = read_back(save_result(result, tmp_path).audio_path)
        assert audio.shape[-1] <= 9600
        assert loudness_lufs(audio, rate) == pytest.approx(-30.0, abs=0.5)
        assert 20 * math.log10(true_peak(audio)) <= -1.0


def test_peak_normalization_is_the_default_and_adds_nothing_to_an_identity():
    peak = compose_run()
    assert peak.export.normalize == Normalize.peak
    assert "normalize" not in peak.generation_fields()["export"]
    explicit = compose_run("export.normalize=peak", "export.loudness_lufs=-14")
    assert output_identity(explicit, 0, "0" * 64) == output_identity(peak, 0, "0" * 64)
    loudness = compose_run("export.normalize=loudness")
    assert output_identity(loudness, 0, "0" * 64) != output_identity(peak, 0, "0" * 64)
    assert loudness.generation_fields()["export"]["loudness_lufs"] == -23.0
    assert output_identity(compose_run("export.normalize=loudness", "export.loudness_lufs=-20"), 0, "0" * 64) != (
        output_identity(loudness, 0, "0" * 64)
    )


def test_every_peak_normalized_sidecar_records_loudness_and_true_peak(shipped, tmp_path):
    config = GenerationConfig(duration_s=1.0, device="cpu", phase=PhaseConfig(iterations=4))
    [result] = GenerationPipeline(shipped, config).generate([2])
    saved = save_result(result, tmp_path)
    audio, rate = read_back(saved.audio_path)
    level = saved.record["level"]
    assert set(level) == {"normalize", "integrated_lufs", "true_peak_dbtp"} and level["normalize"] == "peak"
    assert level["integrated_lufs"] == pytest.approx(loudness_lufs(audio, rate), abs=0.05)
    assert level["true_peak_dbtp"] == pytest.approx(20 * math.log10(true_peak(audio)), abs=0.05)
    assert level["true_peak_dbtp"] >= saved.record["file"]["peak_dbfs"] - 0.01
