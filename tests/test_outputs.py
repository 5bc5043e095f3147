"""Outputs on disk: each format's file and tags read back, the ceiling in the written file, file
names, never overwriting, sidecar-then-audio, and telling complete outputs from truncated ones."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import signal
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
import soundfile as sf
import torch

try:
    import resource
except ImportError:  # not on Windows
    resource = None

from sda.config import OPTIONS, DualSeedStereo, GenerationConfig, PhaseConfig, WavExport
from sda.dsp.quality import measure_quality
from sda.errors import OutputError
from sda.files import file_sha256
from sda.model import load_model
from sda.outputs import (
    claimed_identities,
    identity_of_parameters,
    output_stem,
    remove_stale_temporaries,
    reserve_output_paths,
    save_result,
    verify_output,
    write_sidecar,
)
from sda.pipeline import GenerationPipeline, GenerationResult
from sda.versions import sda_version
from tests.helpers import CEILING, FORMATS

RATES = (44100, 48000, 96000)
FORMAT_IDS = [f"{f}{d}" for f, d, _, _ in FORMATS]
NAME = re.compile(r"^gen_(\d{8}T\d{6}Z)_seed(\d+)(_\d+)?\.(wav|flac|ogg|json)$")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stereo_results() -> dict[int, GenerationResult]:
    """One dual_seed render of the shipped model per output rate, 0.5 s, peak at -1 dBFS."""
    model = load_model("default", "cpu")
    results = {}
    for rate in RATES:
        config = GenerationConfig(
            duration_s=0.5,
            device="cpu",
            stereo=DualSeedStereo(),
            export=WavExport(sample_rate=rate),
            phase=PhaseConfig(iterations=8),
        )
        results[rate] = GenerationPipeline(model, config).generate([11])[0]
    return results


def as_format(result: GenerationResult, format: str, bit_depth: int) -> GenerationResult:
    """The same audio with the export format changed (the format decides nothing before export)."""
    depth = {} if format == "ogg" else {"bit_depth": bit_depth}
    export = OPTIONS["export"][format](sample_rate=result.config.export.sample_rate, **depth)
    return dataclasses.replace(result, config=dataclasses.replace(result.config, export=export))


def silent_result(frames: int = 4800) -> GenerationResult:
    audio = np.zeros((1, frames), np.float32)
    now = datetime.now(UTC)
    return GenerationResult(
        seed=0,
        right_seed=None,
        audio=audio,
        sample_rate=48000,
        metrics=measure_quality(torch.from_numpy(audio), 48000),
        config=GenerationConfig(duration_s=0.1, device="cpu"),
        model_name="test",
        model_sha256="0" * 64,
        device="cpu",
        started_at=now,
        finished_at=now,
    )


# --------------------------------------------------------------------------------------------
# Formats, headers, tags, level


@pytest.mark.parametrize("format, bit_depth, container, subtype", FORMATS, ids=FORMAT_IDS)
def test_each_format_reads_back_with_its_rate_channels_subtype_frames_and_tags(
    stereo_results, tmp_path, format, bit_depth, container, subtype
):
    result = as_format(stereo_results[44100], format, bit_depth)
    saved = save_result(result, tmp_path)
    assert saved.audio_path.suffix == f".{format}"
    with sf.SoundFile(saved.audio_path) as handle:
        assert handle.format == container
        assert handle.subtype == subtype
        assert handle.samplerate == 44100
        assert handle.channels == 2
        assert handle.frames == round(0.5 * 44100)
        assert handle.title == f"sda default seed 11 / right {result.right_seed}"
        assert f"identity {saved.identity}" in handle.comment
        assert handle.software.startswith(f"sda {sda_version()}")
    decoded, rate = sf.read(saved.audio_path, dtype="float64", always_2d=True)
    assert rate == 44100 and decoded.shape == (round(0.5 * 44100), 2)
    if format != "ogg":  # lossless: the samples come back to within the quantization step
        step = 2.0 ** -(bit_depth - 1) if bit_depth < 32 else 1e-7
        assert np.abs(decoded.T - result.audio).max() <= 1.5 * step
    else:
        assert np.corrcoef(decoded[:, 0], result.audio[0])[0, 1] > 0.95
    assert verify_output(saved.sidecar_path).ok


@pytest.mark.parametrize("format, bit_depth, container, subtype", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("rate", RATES)
def test_written_file_peaks_at_most_minus_1_dbfs_and_never_clips(
    stereo_results, tmp_path, rate, format, bit_depth, container, subtype
):
    saved = save_result(as_format(stereo_results[rate], format, bit_depth), tmp_path)
    decoded, read_rate = sf.read(saved.audio_path, dtype="float64", always_2d=True)
    assert read_rate == rate
    peak = np.abs(decoded).max()
    assert peak <= CEILING, f"peak {20 * math.log10(peak):.6f} dBFS"
    assert peak > 10 ** (-1.5 / 20), "the level is kept, not needlessly lowered"
    assert not (np.abs(decoded) >= 0.999).any()
    assert saved.record["file"]["peak_dbfs"] == pytest.approx(20 * math.log10(peak), abs=1e-9)


# --------------------------------------------------------------------------------------------
# Names, never overwriting


def test_output_names_follow_gen_utc_timestamp_seed(stereo_results, tmp_path):
    before = datetime.now(UTC).replace(microsecond=0)
    saved = save_result(stereo_results[48000], tmp_path)
    after = datetime.now(UTC)
    match = NAME.match(saved.audio_path.name)
    assert match and match.group(2) == "11" and match.group(4) == "wav", saved.audio_path.name
    assert saved.sidecar_path.name == saved.audio_path.with_suffix(".json").name
    stamp = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert before <= stamp <= after

    eastern = datetime(2026, 11, 24, 3, 15, 22, tzinfo=timezone(timedelta(hours=-5)))
    assert output_stem(eastern, 7) == "gen_20261124T081522Z_seed7"
    with pytest.raises(ValueError, match="timezone"):
        output_stem(datetime(2026, 11, 24, 3, 15, 22), 7)


def test_taken_names_get_2_then_3_and_nothing_is_overwritten(stereo_results, tmp_path):
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = reserve_output_paths(tmp_path, when, 7, "wav")
    assert [p.name for p in first] == ["gen_20260102T030405Z_seed7.wav", "gen_20260102T030405Z_seed7.json"]
    first[0].write_bytes(b"taken")
    second = reserve_output_paths(tmp_path, when, 7, "wav")
    assert [p.name for p in second] == ["gen_20260102T030405Z_seed7_2.wav", "gen_20260102T030405Z_seed7_2.json"]
    second[1].write_bytes(b"{}")  # a sidecar alone also takes the name
    assert reserve_output_paths(tmp_path, when, 7, "wav")[0].name == "gen_20260102T030405Z_seed7_3.wav"

    # the same result saved twice in the same second: two outputs, the first untouched
    a = save_result(stereo_results[48000], tmp_path / "twice")
    a_bytes = a.audio_path.read_bytes()
    b = save_result(stereo_results[48000], tmp_path / "twice")
    assert a.audio_path != b.audio_path
    assert a.audio_path.read_bytes() == a_bytes
    assert verify_output(a.sidecar_path).ok and verify_output(b.sidecar_path).ok


# --------------------------------------------------------------------------------------------
# Sidecar first, and telling complete outputs from broken ones


def test_sidecar_records_the_audio_checksum_and_frames_and_is_written_first(stereo_results, tmp_path):
    saved = save_result(stereo_results[96000], tmp_path)
    record = json.loads(saved.sidecar_path.read_text())
    assert record["file"]["name"] == saved.audio_path.name
    assert record["file"]["sha256"] == file_sha256(saved.audio_path)
    assert record["file"]["frames"] == sf.info(str(saved.audio_path)).frames == round(0.5 * 96000)
    assert record["file"]["sample_rate"] == 96000 and record["file"]["channels"] == 2
    verification = verify_output(saved.sidecar_path)
    assert verification.ok and verification.audio_path == saved.audio_path
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(resource is None, reason="needs POSIX file-size limits")
def test_when_the_audio_cannot_be_written_its_sidecar_is_already_there(stereo_results, tmp_path):
    """The sidecar goes first: with a file-size limit that lets the sidecar (a few kB) through but
    not the audio, the save fails with one line, leaving a complete sidecar whose audio is missing
    and no temporary file."""
    folder = tmp_path / "limited"
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, limits[1]))
    try:
        with pytest.raises(OutputError) as caught:
            save_result(stereo_results[48000], folder)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert "\n" not in str(caught.value)
    sidecars = list(folder.glob("*.json"))
    assert len(sidecars) == 1 and not list(folder.glob("*.wav"))
    assert not list(folder.glob(".*.tmp"))
    record = json.loads(sidecars[0].read_text())
    assert record["file"]["frames"] == round(0.5 * 48000)
    assert verify_output(sidecars[0]).reason == "audio file missing"


def test_truncated_wav_still_opens_but_fails_verification(stereo_results, tmp_path):
    saved = save_result(stereo_results[48000], tmp_path)
    data = saved.audio_path.read_bytes()
    saved.audio_path.write_bytes(data[: len(data) - 6000])  # a writer killed mid-file
    audio, rate = sf.read(saved.audio_path)  # soundfile does not object ...
    assert rate == 48000 and 0 < audio.shape[0] < 24000
    verification = verify_output(saved.sidecar_path)  # ... but the sidecar does
    assert not verification.ok
    assert "frame count" in verification.reason


def test_corrupted_missing_or_unreadable_outputs_fail_verification(stereo_results, tmp_path):
    saved = save_result(stereo_results[48000], tmp_path)
    data = bytearray(saved.audio_path.read_bytes())
    data[-10] ^= 0xFF  # same length, same header: only the checksum can tell
    saved.audio_path.write_bytes(bytes(data))
    assert verify_output(saved.sidecar_path).reason == "checksum mismatch"
    saved.audio_path.unlink()
    assert verify_output(saved.sidecar_path).reason == "audio file missing"
    saved.sidecar_path.write_text('{"file": ')
    assert "sidecar unparsable" in verify_output(saved.sidecar_path).reason
    assert verify_output(tmp_path / "nothing.json").reason == "sidecar missing"


def test_stale_temporaries_are_removed_and_finished_outputs_kept(stereo_results, tmp_path):
    saved = save_result(stereo_results[48000], tmp_path)
    stale = [tmp_path / f".{saved.audio_path.name}.4242.tmp", tmp_path / ".gen_x_seed1.json.17.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([saved.audio_path.name, saved.sidecar_path.name])
    assert verify_output(saved.sidecar_path).ok
    assert remove_stale_temporaries(tmp_path / "not-there") == []


def test_sidecar_refuses_nan_but_a_silent_output_still_saves_with_null_levels(tmp_path):
    with pytest.raises(ValueError):
        write_sidecar(tmp_path / "bad.json", {"snr_db": float("nan")})
    assert not list(tmp_path.iterdir())
    saved = save_result(silent_result(), tmp_path)
    record = json.loads(saved.sidecar_path.read_text())
    assert record["file"]["peak_dbfs"] is None
    assert record["quality"]["peak_dbfs"] is None and record["quality"]["snr_db"] is None
    assert record["quality"]["rating"] == "red"
    assert verify_output(saved.sidecar_path).ok


def test_identity_is_recomputed_from_the_sidecars_parameters_never_trusted(stereo_results, tmp_path):
    saved = save_result(stereo_results[48000], tmp_path)
    record = json.loads(saved.sidecar_path.read_text())
    assert identity_of_parameters(record["identity_parameters"]) == record["identity"] == saved.identity
    assert claimed_identities(record) == {saved.identity}

    edited = {**record, "identity": "0123456789abcdef"}  # the stored identity changed by hand
    saved.sidecar_path.write_text(json.dumps(edited))
    check = verify_output(saved.sidecar_path)
    assert not check.ok and check.audio_path == saved.audio_path
    assert check.reason == f"identity 0123456789abcdef is not what its identity parameters hash to ({saved.identity})"
    assert claimed_identities(edited) == {"0123456789abcdef", saved.identity}

    other_seed = {**record, "identity_parameters": {**record["identity_parameters"], "seed": 12}}
    saved.sidecar_path.write_text(json.dumps(other_seed))  # the parameters changed, not the identity
    assert "is not what its identity parameters hash to" in verify_output(saved.sidecar_path).reason

    saved.sidecar_path.write_text(json.dumps({k: v for k, v in record.items() if k != "identity_parameters"}))
    assert verify_output(saved.sidecar_path).reason == "sidecar has no identity and identity parameters"
    saved.sidecar_path.write_text(json.dumps(record))
    assert verify_output(saved.sidecar_path).ok
