import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sda.data.folder import load_audio_folder, printable
from sda.data.windows import split_by_file
from sda.errors import DatasetError

TARGET_RATE = 48000


def tone(freq_hz: float, sample_rate: int, seconds: float, amplitude: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    mono = (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def peak_frequency_hz(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size), 8 * audio.size))
    return float(np.argmax(spectrum) * sample_rate / (8 * audio.size))


def middle_rms(audio: np.ndarray) -> float:
    quarter = audio.size // 4
    return float(np.sqrt(np.mean(np.square(audio[quarter:-quarter], dtype=np.float64))))


FORMATS = [
    # (file name, soundfile format, subtype, source rate, channels, lossy)
    ("pcm16_44k_mono.wav", "WAV", "PCM_16", 44100, 1, False),
    ("pcm24_96k_stereo.flac", "FLAC", "PCM_24", 96000, 2, False),
    ("vorbis_22k_6ch.ogg", "OGG", "VORBIS", 22050, 6, True),
    ("float_48k_6ch.aiff", "AIFF", "FLOAT", 48000, 6, False),
    ("mpeg_44k_stereo.mp3", "MP3", "MPEG_LAYER_III", 44100, 2, True),
]


@pytest.mark.parametrize(
    "name, file_format, subtype, source_rate, channels, lossy", FORMATS, ids=[f[0] for f in FORMATS]
)
def test_each_format_rate_and_channel_count_comes_back_as_the_same_tone_mono_at_48k(
    tmp_path, name, file_format, subtype, source_rate, channels, lossy
):
    if file_format not in sf.available_formats() or subtype not in sf.available_subtypes(file_format):
        pytest.skip(f"this libsndfile cannot write {file_format}/{subtype}")
    sf.write(
        tmp_path / name, tone(440.0, source_rate, 1.0, 0.5, channels), source_rate, format=file_format, subtype=subtype
    )
    source_frames = sf.read(tmp_path / name)[0].shape[0]  # lossy codecs may add priming frames

    dataset = load_audio_folder(tmp_path, sample_rate=TARGET_RATE)

    assert dataset.skipped == [] and dataset.sample_rate == TARGET_RATE
    (clip,) = dataset.clips
    assert clip.path == Path(name)
    assert (clip.source_sample_rate, clip.source_channels) == (source_rate, channels)
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert abs(clip.audio.size - round(source_frames * TARGET_RATE / source_rate)) <= 1
    assert peak_frequency_hz(clip.audio, TARGET_RATE) == pytest.approx(440.0, abs=1.0)
    # identical channels averaged: the level of one channel, 0.5 / sqrt(2) RMS
    level_error_db = 20 * np.log10(middle_rms(clip.audio) / (0.5 / np.sqrt(2)))
    assert abs(level_error_db) < (0.5 if lossy else 0.01)


def test_channels_are_averaged_not_summed(tmp_path):
    left = tone(1000.0, TARGET_RATE, 0.5, 0.8)
    sf.write(tmp_path / "left_only.wav", np.stack([left, np.zeros_like(left)], axis=1), TARGET_RATE, subtype="FLOAT")

    (clip,) = load_audio_folder(tmp_path).clips

    np.testing.assert_allclose(clip.audio, left / 2, atol=1e-7)


def test_unreadable_files_are_skipped_with_a_warning_naming_each(tmp_path, caplog):
    sf.write(tmp_path / "good.wav", tone(440.0, TARGET_RATE, 0.5), TARGET_RATE)
    (tmp_path / "corrupt.wav").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "notes.wav").write_text("these are my field recording notes, not audio\n" * 20)
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.float32), TARGET_RATE)
    caplog.set_level(logging.WARNING, logger="sda.data.folder")

    dataset = load_audio_folder(tmp_path)

    assert [clip.path for clip in dataset.clips] == [Path("good.wav")]
    reasons = {skipped.path: skipped.reason for skipped in dataset.skipped}
    assert set(reasons) == {Path("corrupt.wav"), Path("notes.wav"), Path("empty.wav")}
    assert "empty" in reasons[Path("empty.wav")]
    assert all(reason and "\n" not in reason for reason in reasons.values())
    warned = " ".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    for name in ("corrupt.wav", "notes.wav", "empty.wav"):
        assert name in warned


def test_an_mp3_named_wav_is_read_by_content_not_extension(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    sf.write(tmp_path / "really_an_mp3.wav", tone(440.0, 44100, 1.0), 44100, format="MP3")

    (clip,) = load_audio_folder(tmp_path).clips

    assert peak_frequency_hz(clip.audio, TARGET_RATE) == pytest.approx(440.0, abs=1.0)


def test_a_few_nan_samples_are_zeroed_with_a_warning_and_mostly_nan_files_are_skipped(tmp_path, caplog):
    few = tone(440.0, TARGET_RATE, 1.0)
    few[[100, 2000, 30000]] = np.nan
    few[[500, 40000]] = np.inf
    mostly = tone(440.0, TARGET_RATE, 1.0)
    mostly[::2] = np.nan
    sf.write(tmp_path / "few_nans.wav", few, TARGET_RATE, subtype="FLOAT")
    sf.write(tmp_path / "mostly_nan.wav", mostly, TARGET_RATE, subtype="FLOAT")
    assert np.isnan(sf.read(tmp_path / "few_nans.wav")[0]).sum() == 3  # float WAV keeps NaN
    caplog.set_level(logging.WARNING, logger="sda.data.folder")

    dataset = load_audio_folder(tmp_path)

    (clip,) = dataset.clips
    assert clip.path == Path("few_nans.wav")
    assert np.isfinite(clip.audio).all()
    assert (clip.audio[[100, 500, 2000, 30000, 40000]] == 0).all()
    np.testing.assert_array_equal(
        np.delete(clip.audio, [100, 500, 2000, 30000, 40000]), np.delete(few, [100, 500, 2000, 30000, 40000])
    )
    assert any("few_nans.wav" in r.getMessage() and "5" in r.getMessage() for r in caplog.records)
    (skipped,) = dataset.skipped
    assert skipped.path == Path("mostly_nan.wav") and "NaN" in skipped.reason


def test_subfolders_are_walked_in_sorted_order_and_hidden_files_ignored_silently(tmp_path, caplog):
    for relative in ["b/2.wav", "a/z/deep.flac", "a/1.wav", "top.wav"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / relative, tone(440.0, TARGET_RATE, 0.25), TARGET_RATE)
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01junk")
    (tmp_path / ".hidden_dir").mkdir()
    sf.write(tmp_path / ".hidden_dir" / "take.wav", tone(440.0, TARGET_RATE, 0.25), TARGET_RATE)
    (tmp_path / "corpus.json").write_text("{}")  # the demo corpus manifest is not audio
    caplog.set_level(logging.WARNING, logger="sda.data.folder")

    dataset = load_audio_folder(tmp_path)

    assert [c.path.as_posix() for c in dataset.clips] == ["a/1.wav", "a/z/deep.flac", "b/2.wav", "top.wav"]
    assert dataset.skipped == [] and caplog.records == []
    assert dataset.fingerprint.file_count == 4
    assert dataset.fingerprint.total_seconds == pytest.approx(1.0)


@pytest.mark.parametrize("source_rate", [44100, 96000])
def test_fingerprint_counts_seconds_at_the_target_rate(tmp_path, source_rate):
    sf.write(tmp_path / "a.wav", tone(440.0, source_rate, 2.0), source_rate)

    fingerprint = load_audio_folder(tmp_path).fingerprint

    assert fingerprint.to_dict() == {
        "file_count": 1,
        "total_seconds": pytest.approx(2.0, abs=1 / TARGET_RATE),
        "content_hash": fingerprint.content_hash,
    }
    assert len(fingerprint.content_hash) == 64


def test_fingerprint_is_stable_but_changes_when_a_file_is_edited_or_renamed(tmp_path):
    sf.write(tmp_path / "a.wav", tone(440.0, TARGET_RATE, 0.5), TARGET_RATE)
    sf.write(tmp_path / "b.wav", tone(660.0, TARGET_RATE, 0.5), TARGET_RATE)
    first = load_audio_folder(tmp_path).fingerprint.content_hash
    assert load_audio_folder(tmp_path).fingerprint.content_hash == first

    edited = tone(660.0, TARGET_RATE, 0.5)
    edited[1000] += 0.01
    sf.write(tmp_path / "b.wav", edited, TARGET_RATE)
    after_edit = load_audio_folder(tmp_path).fingerprint.content_hash
    (tmp_path / "b.wav").rename(tmp_path / "c.wav")
    after_rename = load_audio_folder(tmp_path).fingerprint.content_hash

    assert len({first, after_edit, after_rename}) == 3


def test_skipped_files_do_not_enter_the_fingerprint(tmp_path):
    sf.write(tmp_path / "a.wav", tone(440.0, TARGET_RATE, 0.5), TARGET_RATE)
    before = load_audio_folder(tmp_path).fingerprint
    (tmp_path / "readme.txt").write_text("not audio")

    assert load_audio_folder(tmp_path).fingerprint == before


def assert_one_line_dataset_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("dataset.path=")
    for fragment in fragments:
        assert fragment in message


def test_missing_path_raises_one_line_dataset_error(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        load_audio_folder(tmp_path / "nowhere")
    assert_one_line_dataset_error(excinfo, "nowhere", "does not exist")


def test_a_file_instead_of_a_folder_raises_one_line_dataset_error(tmp_path):
    sf.write(tmp_path / "a.wav", tone(440.0, TARGET_RATE, 0.5), TARGET_RATE)
    with pytest.raises(DatasetError) as excinfo:
        load_audio_folder(tmp_path / "a.wav")
    assert_one_line_dataset_error(excinfo, "a.wav", "not a folder")


def test_an_empty_folder_raises_one_line_dataset_error_naming_it(tmp_path):
    (tmp_path / "recordings").mkdir()
    (tmp_path / "recordings" / ".DS_Store").write_bytes(b"junk")
    with pytest.raises(DatasetError) as excinfo:
        load_audio_folder(tmp_path / "recordings")
    assert_one_line_dataset_error(excinfo, "recordings", "no files")


def test_a_folder_of_only_unreadable_files_logs_each_reason_then_raises_one_line(tmp_path, caplog):
    (tmp_path / "a.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnope")
    (tmp_path / "b.txt").write_text("hello")
    caplog.set_level(logging.WARNING, logger="sda.data.folder")

    with pytest.raises(DatasetError) as excinfo:
        load_audio_folder(tmp_path)

    assert_one_line_dataset_error(excinfo, "2 files", "logged")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "a.wav" in warnings[0] and "b.txt" in warnings[1]


def test_file_names_that_are_not_utf8_are_read_hashed_split_and_logged_safely(tmp_path, capsys):
    """Names are whatever bytes the OS holds: Latin-1 'café' is not UTF-8. Python sees such a name
    with surrogate escapes, which a UTF-8 log file cannot write and soundfile cannot encode."""
    names = [os.fsdecode(b"caf\xe9 rain.wav"), os.fsdecode(b"n\xf8rd/wind.flac"), "plain.wav"]
    for name, freq in zip(names, (440.0, 660.0, 880.0), strict=True):
        audio = io.BytesIO()
        sf.write(audio, tone(freq, TARGET_RATE, 0.5), TARGET_RATE, format="FLAC" if name.endswith("flac") else "WAV")
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(audio.getvalue())
    broken = os.fsdecode(b"broken \xff.wav")
    (tmp_path / broken).write_bytes(b"RIFF" + bytes(100))
    # What Hydra's job log file is: a strict UTF-8 text stream. A record it cannot encode prints
    # "--- Logging error ---" and a traceback on stderr.
    log_file = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    handler = logging.StreamHandler(log_file)
    logging.getLogger("sda").addHandler(handler)
    try:
        dataset = load_audio_folder(tmp_path)
    finally:
        logging.getLogger("sda").removeHandler(handler)

    loaded = {clip.path: clip for clip in dataset.clips}
    assert set(loaded) == {Path(n) for n in names}
    assert peak_frequency_hz(loaded[Path(names[0])].audio, TARGET_RATE) == pytest.approx(440.0, abs=1.0)
    ((skipped_path, reason),) = [(s.path, s.reason) for s in dataset.skipped]
    assert skipped_path == Path(broken) and reason.startswith("not readable as audio")
    log_file.flush()
    logged = log_file.buffer.getvalue().decode("utf-8")
    assert "skipping broken \\xff.wav: not readable as audio" in logged
    assert "Logging error" not in capsys.readouterr().err

    # The content hash is over each name's own bytes and each file's sha256, in sorted order.
    expected = hashlib.sha256()
    for clip in sorted(dataset.clips, key=lambda c: c.path.parts):
        digest = hashlib.sha256((tmp_path / clip.path).read_bytes()).digest()
        expected.update(os.fsencode(clip.path.as_posix()) + b"\0" + digest)
    assert dataset.fingerprint.content_hash == expected.hexdigest()
    train, validation = split_by_file(list(dataset.clips), 0.34, seed=0)
    assert len(train) == 2 and len(validation) == 1
    assert printable(Path(names[0])) == "caf\\xe9 rain.wav" and printable("café.wav") == "café.wav"
