"""Reading a folder of the user's audio into mono clips at one sample rate.

Every regular file under the folder is offered to soundfile, whatever its extension; what
soundfile cannot read is skipped with a logged warning, never a crash. Hidden files and folders
(names starting with '.') are passed over silently, and so is the demo corpus manifest
(`corpus.json` at the top level), which is not audio.

Clips come back as float32 mono `[samples]` at the requested rate: channels are averaged, then
resampled with `sda.dsp.resample`. Files are read one block at a time and mixed as they arrive,
so memory holds one mono array per file, never a whole multichannel file.

File names are whatever bytes the OS holds, valid UTF-8 or not. Python hands names that are not
as text with surrogate escapes, which no text stream (a log file, a console) can write and which
soundfile cannot encode: files are opened by their bytes (`os.fsencode`), hashed by those bytes,
and shown through `printable`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from sda.data.corpus import MANIFEST_NAME
from sda.dsp.resample import LOWPASS_FILTER_WIDTH, ROLLOFF, resample
from sda.errors import ConfigError, DatasetError
from sda.files import file_sha256

log = logging.getLogger(__name__)

# A file whose share of NaN/inf samples is at most this is repaired (those samples set to 0);
# above it the file is skipped, as such a file is more likely broken than briefly glitched.
MAX_NONFINITE_FRACTION = 0.01
READ_BLOCK_FRAMES = 1 << 16
# A rate pair whose reduced ratio is a large prime (47999 Hz, say) needs a resampling kernel of
# gigabytes; such files are skipped with a reason rather than exhausting memory.
MAX_RESAMPLER_KERNEL_ELEMENTS = 64_000_000


@dataclass(frozen=True)
class AudioClip:
    """One usable file: `audio` is float32 mono `[samples]` at the dataset's sample rate; `path` is
    relative to the dataset root."""

    path: Path
    audio: np.ndarray
    source_sample_rate: int
    source_channels: int


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class DatasetFingerprint:
    """Identifies the training data: `content_hash` is sha256 over the sorted relative paths and the
    raw bytes of every file used, so renaming or editing any of them changes it."""

    file_count: int
    total_seconds: float
    content_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"file_count": self.file_count, "total_seconds": self.total_seconds, "content_hash": self.content_hash}


@dataclass(frozen=True)
class LoadedDataset:
    root: Path
    clips: list[AudioClip]
    skipped: list[SkippedFile]
    fingerprint: DatasetFingerprint
    sample_rate: int


class _Unusable(Exception):
    """A file cannot be used; the message is the reason recorded in `SkippedFile`."""


def load_audio_folder(root: Path | str, sample_rate: int = 48000) -> LoadedDataset:
    """Every readable audio file under `root` (recursively, sorted by relative path) as mono
    float32 at `sample_rate`. Raises DatasetError when the folder is missing, empty, or holds no
    usable file (each skipped file's reason is logged first)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate={sample_rate!r}: must be a positive integer")
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset.path={str(root)!r} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset.path={str(root)!r} is not a folder; point it at a folder of audio files")
    candidates = _candidate_files(root)
    if not candidates:
        raise DatasetError(
            f"dataset.path={str(root)!r} holds no files; put audio files there "
            "(WAV, FLAC, OGG, AIFF, MP3 or any format soundfile reads)"
        )

    clips: list[AudioClip] = []
    skipped: list[SkippedFile] = []
    content = hashlib.sha256()
    for relative in candidates:
        full = root / relative
        try:
            audio, source_rate, channels = _read_mono(full, relative)
            audio = _resample_to(audio, source_rate, sample_rate)
            file_digest = _file_digest(full)
        except _Unusable as unusable:
            reason = _one_line(str(unusable))
            log.warning("skipping %s: %s", printable(relative), reason)
            skipped.append(SkippedFile(relative, reason))
            continue
        clips.append(AudioClip(relative, audio, source_rate, channels))
        # Length-free framing is unambiguous here: a path never holds NUL, a digest is fixed-size.
        # The name's own bytes: for a UTF-8 name the same as .encode("utf-8"), so hashes of such
        # datasets are what they were.
        content.update(os.fsencode(relative.as_posix()) + b"\0" + file_digest)

    if not clips:
        raise DatasetError(
            f"dataset.path={str(root)!r}: none of the {len(candidates)} files tried is usable audio; "
            "each file's reason is logged above"
        )
    total_samples = sum(clip.audio.shape[0] for clip in clips)
    fingerprint = DatasetFingerprint(len(clips), total_samples / sample_rate, content.hexdigest())
    return LoadedDataset(root=root, clips=clips, skipped=skipped, fingerprint=fingerprint, sample_rate=sample_rate)


def read_audio_file(path: Path | str, sample_rate: int, key: str = "file") -> AudioClip:
    """One file as a mono float32 clip at `sample_rate`, read and resampled as `load_audio_folder`
    does (its `path` is the path given). Raises ConfigError, one line naming `key` (the setting
    that named the file), the file and why it is not usable."""
    path = Path(path)
    try:
        audio, source_rate, channels = _read_mono(path, path)
        audio = _resample_to(audio, source_rate, sample_rate)
    except _Unusable as unusable:
        raise ConfigError(key, printable(path), f"usable audio, but it is {_one_line(str(unusable))}") from None
    return AudioClip(path, audio, source_rate, channels)


def _candidate_files(root: Path) -> list[Path]:
    """Relative paths of the regular, non-hidden files under root, sorted by path components."""
    found: list[Path] = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        here = Path(directory)
        for name in names:
            if name.startswith("."):
                continue
            relative = (here / name).relative_to(root)
            if relative == Path(MANIFEST_NAME):
                log.debug("not reading %s: the demo corpus manifest", printable(relative))
                continue
            try:
                is_regular = stat.S_ISREG(os.stat(here / name).st_mode)
            except OSError as error:  # a dangling link or a permission problem: not readable
                log.warning("skipping %s: %s", printable(relative), _one_line(printable(str(error))))
                continue
            if is_regular:
                found.append(relative)
    return sorted(found, key=lambda p: p.parts)


def _read_mono(path: Path, relative: Path) -> tuple[np.ndarray, int, int]:
    """(float32 mono [samples] at the source rate, source rate, channel count). Non-finite samples
    are zeroed when rare enough; raises _Unusable with the reason otherwise."""
    blocks: list[np.ndarray] = []
    nonfinite = 0
    try:
        with sf.SoundFile(_soundfile_name(path)) as f:
            source_rate, channels = int(f.samplerate), int(f.channels)
            while True:
                block = f.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                bad = ~np.isfinite(block)
                count = int(np.count_nonzero(bad))
                if count:
                    nonfinite += count
                    block[bad] = 0.0
                # mean over channels in float32: exact enough for any channel count a file can hold
                blocks.append(block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0].copy())
    # libsndfile and its codecs report unreadable input in several ways (format errors, truncated
    # streams, OS errors); any of them means this one file is unusable, not that loading failed.
    except Exception as error:  # noqa: BLE001
        raise _Unusable(f"not readable as audio ({type(error).__name__}: {printable(str(error))})") from None
    frames = sum(b.shape[0] for b in blocks)
    if frames == 0:
        raise _Unusable("empty (no audio frames)")
    if source_rate <= 0:
        raise _Unusable(f"sample rate {source_rate} Hz is not usable")
    if nonfinite:
        fraction = nonfinite / (frames * channels)
        if fraction > MAX_NONFINITE_FRACTION:
            raise _Unusable(
                f"{nonfinite} of {frames * channels} samples ({fraction:.1%}) are NaN or infinite; at most "
                f"{MAX_NONFINITE_FRACTION:.0%} are repaired"
            )
        log.warning("%s: replaced %d NaN or infinite samples with 0", printable(relative), nonfinite)
    audio = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return audio, source_rate, channels


def _resample_to(audio: np.ndarray, source_rate: int, sample_rate: int) -> np.ndarray:
    if source_rate == sample_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    g = math.gcd(source_rate, sample_rate)
    orig, new = source_rate // g, sample_rate // g
    half_width = math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))
    if new * (2 * half_width + orig) > MAX_RESAMPLER_KERNEL_ELEMENTS:
        raise _Unusable(
            f"sample rate {source_rate} Hz has no small ratio to {sample_rate} Hz ({orig}:{new}); "
            "convert the file to a common rate (44100, 48000, 96000 Hz ...)"
        )
    resampled = resample(torch.from_numpy(audio), source_rate, sample_rate)
    return np.ascontiguousarray(resampled.numpy(), dtype=np.float32)


def _file_digest(path: Path) -> bytes:
    """The file's SHA-256 as 32 bytes (what the content hash is made of)."""
    try:
        return bytes.fromhex(file_sha256(path))
    except OSError as error:
        raise _Unusable(f"could not be read again for the dataset hash ({printable(str(error))})") from None


def printable(path: Path | str) -> str:
    """A file name as text a UTF-8 stream (log file, console) can write: bytes that are not UTF-8 as `\\xNN`
    (the name `caf\\xe9.wav` for the Latin-1 bytes of "café.wav"); any other name unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _soundfile_name(path: Path) -> str | bytes:
    """The name to give soundfile. It encodes a str name strictly, which fails for a name that is
    not valid UTF-8; libsndfile takes the OS's own bytes on POSIX. Windows names are Unicode and
    soundfile opens a str through the wide-character call there."""
    return os.fsencode(path) if os.name == "posix" else str(path)


def _one_line(text: str) -> str:
    return " ".join(text.split())
