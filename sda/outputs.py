"""What an output is on disk: its names, its sidecar, its identity, and how to tell it is complete.

An output is an audio file `gen_{UTC timestamp}_seed{seed}.{wav,flac,ogg}` and its sidecar JSON of
the same stem. Order on disk for every output (`save_result`):
    1. encode the audio in memory (sda.encode): bytes, frame count, sha256;
    2. write the sidecar, which records that frame count and checksum (`write_sidecar`);
    3. write the audio bytes.
Both writes are atomic (sda.files) and never overwrite. A kill between 2 and 3 leaves a sidecar
without its audio; a kill during a write leaves only a temporary file, removed at the next start
(`remove_stale_temporaries`). An output is done only when `verify_output` finds its audio
matching the sidecar's frame count and checksum: a WAV truncated by a killed process still opens
and reads without error, so a file's existence proves nothing. Its identity is recomputed from
the sidecar's `identity_parameters`, never taken from the stored `identity` field.

An output's identity is a hash of everything that decides its audio: the checkpoint's sha256,
the seed, and the resolved generation parameters (duration, chunking, stereo, export, phase),
and for a source other than the prior its option, parameters and the content (sha256) of each
file it reads, never their paths (the prior adds nothing: its outputs keep the identities they
had before sources existed). It leaves out what only decides how the audio is computed (device,
batch size), which job made it (count, the job's first seed) or how it is judged (quality).
Resume compares identities, never names or times.

The names of everything else sda writes into an output folder are here too, so that the runner,
the sweep callback and the report agree on them without importing each other.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import soundfile as sf

from sda.config import GenerationConfig, Normalize, PriorSource
from sda.encode import EXTENSIONS, EncodedAudio, encode_audio
from sda.errors import OutputError
from sda.files import TEMP_GLOB, file_sha256, write_atomic, write_json_atomic
from sda.memorization import UNAVAILABLE
from sda.numerics import numerics_status
from sda.pipeline import GenerationResult
from sda.sources import source_identity
from sda.versions import sda_version, versions

# Files sda writes into a job folder (a run folder, or one job of a sweep) ...
OUTPUT_PREFIX = "gen_"  # every output's audio and sidecar
SIDECAR_GLOB = f"{OUTPUT_PREFIX}*.json"
OUTCOME_FILE = "outcome.json"  # the job's outcome: every item's status and reason
LOCK_FILE = ".sda.lock"  # held while a job writes into the folder
SPECTROGRAM_DIR = "spectrograms"  # the report's pictures, one per done output
BROKEN_DIR = "broken"  # broken outputs set aside before their identity is made again (sda.runner)
# ... into the run or sweep folder ...
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.csv"
INDEX_FILE = "index.html"
# ... and, in either, the atomic writer's temporary files while it writes: TEMP_GLOB, imported
# from sda.files, which makes those names.

# 2: identities and sidecar configs hold only the chosen option's keys of each group.
# 3: the source and quality groups in the config; `source` (files and their sha256) and
#    `memorization` (the nearest training window and the verdict) records.
SIDECAR_FORMAT_VERSION = 3
# Parameters that change an output's audio (besides the seed and the checkpoint).
IDENTITY_FIELDS = ("duration_s", "chunking", "stereo", "export", "phase")


# ------------------------------------------------------------------------------------------------
# Names


def output_stem(timestamp_utc: datetime, seed: int) -> str:
    """`gen_{UTC timestamp}_seed{seed}`, e.g. gen_20261124T031522Z_seed7."""
    if timestamp_utc.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (UTC)")
    return f"{OUTPUT_PREFIX}{timestamp_utc.astimezone(UTC):%Y%m%dT%H%M%SZ}_seed{seed}"


def reserve_output_paths(folder: Path, timestamp_utc: datetime, seed: int, format: str) -> tuple[Path, Path]:
    """(audio path, sidecar path) whose names are both free; `_2`, `_3` ... when taken."""
    folder = Path(folder)
    stem = output_stem(timestamp_utc, seed)
    candidate, n = stem, 1
    while (folder / f"{candidate}{EXTENSIONS[format]}").exists() or (folder / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}_{n}"
    return folder / f"{candidate}{EXTENSIONS[format]}", folder / f"{candidate}.json"


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files left by killed processes; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.glob(TEMP_GLOB)):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------------
# Sidecars


def write_sidecar(path: Path, record: dict[str, Any]) -> None:
    """JSON, atomically. NaN or infinity in the record raise ValueError: the file stays valid JSON."""
    write_json_atomic(path, record)


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a JSON object")
    return record


# ------------------------------------------------------------------------------------------------
# Identity and the sidecar record


def identity_parameters(config: GenerationConfig, seed: int, model_sha256: str) -> dict[str, Any]:
    """Raises a one-line ConfigError when a source file does not exist (its content is hashed)."""
    generation = config.generation_fields()
    parameters = {"checkpoint_sha256": model_sha256, "seed": int(seed), **{k: generation[k] for k in IDENTITY_FIELDS}}
    source = source_identity(config.source)
    if source is not None:
        parameters["source"] = source
    return parameters


def output_identity(config: GenerationConfig, seed: int, model_sha256: str) -> str:
    """Stable 16-hex-digit identity of the output `seed` makes under `config` and the model."""
    return identity_of_parameters(identity_parameters(config, seed, model_sha256))


def identity_of_parameters(parameters: dict[str, Any]) -> str:
    """The identity an `identity_parameters` record (as a sidecar holds it) hashes to."""
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SavedOutput:
    audio_path: Path
    sidecar_path: Path
    identity: str
    record: dict[str, Any]


def audio_tags(result: GenerationResult, identity: str) -> dict[str, str]:
    """Embedded tags. Nothing time-dependent: the same output always gives the same bytes."""
    cfg = result.config
    seeds = f"seed {result.seed}" + (f" / right {result.right_seed}" if result.right_seed is not None else "")
    # a prior output's tags (and so its bytes) are what they were before sources existed
    source = "" if isinstance(cfg.source, PriorSource) else f", source {cfg.source.mode}"
    return {
        "title": f"sda {result.model_name} {seeds}",
        "comment": (
            f"identity {identity}; {cfg.chunking.mode} chunking, {cfg.stereo.mode} stereo{source}, "
            f"{cfg.duration_s:g} s; model sha256 {result.model_sha256[:12]}"
        ),
        "software": f"sda {sda_version()}",
    }


def level_record(result: GenerationResult) -> dict[str, Any]:
    """The sidecar's `level`: how the level was set (`normalize`, and for loudness its target and
    true-peak ceiling) and what the delivered audio measures (integrated loudness, true peak;
    for loudness, the gain and by how many LU the ceiling kept it short of its target)."""
    export = result.config.export
    record: dict[str, Any] = {"normalize": export.normalize.value}
    if export.normalize == Normalize.loudness:
        record["target_lufs"] = export.loudness_lufs
        record["true_peak_ceiling_dbtp"] = export.true_peak_dbtp
    if result.level is not None:
        record.update(result.level.to_dict())
    return record


def length_record(result: GenerationResult) -> dict[str, Any]:
    """The sidecar's `length`: the file's frames and seconds, and what decided them (a one-shot's
    length is its sound's; every other output's is duration_s exactly)."""
    cfg = result.config
    return {
        "frames": result.frames,
        "seconds": result.frames / result.sample_rate,
        "rule": cfg.chunking.length_rule(cfg.duration_s),
    }


def sidecar_record(
    result: GenerationResult,
    identity: str,
    audio_name: str,
    encoded: EncodedAudio,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = result.config
    return {
        "sidecar_format_version": SIDECAR_FORMAT_VERSION,
        "identity": identity,
        "identity_parameters": identity_parameters(cfg, result.seed, result.model_sha256),
        "file": {
            "name": audio_name,
            "format": encoded.format,
            "subtype": encoded.subtype,
            "sample_rate": encoded.sample_rate,
            "channels": encoded.channels,
            "frames": encoded.frames,
            "bit_depth": cfg.export.bit_depth,
            "sha256": encoded.sha256,
            # -inf for digital silence, which JSON cannot hold: None, as in the quality record
            "peak_dbfs": encoded.peak_dbfs if math.isfinite(encoded.peak_dbfs) else None,
            # measured on the decoded file only under a true-peak ceiling (normalize=loudness)
            "true_peak_dbtp": encoded.true_peak_dbtp,
        },
        "seeds": {"left": result.seed, "right": result.right_seed},
        "seed": result.seed,
        "model": {"name": result.model_name, "sha256": result.model_sha256, "checkpoint": cfg.model.checkpoint},
        "config": cfg.generation_fields(),
        "duration_s": cfg.duration_s,
        "length": length_record(result),
        "level": level_record(result),
        "sample_rate": result.sample_rate,
        "bit_depth": cfg.export.bit_depth,
        "channels": result.channels,
        "device": result.device,
        "started_at": result.started_at.isoformat(),
        "finished_at": result.finished_at.isoformat(),
        "elapsed_s": result.elapsed_s,
        "timings_s": result.timings_s,
        "quality": result.metrics.to_dict(),
        "source": {"mode": cfg.source.mode, "files": [dict(entry) for entry in result.source_files]},
        "memorization": memorization_record(result),
        # what decides the audio's last bits here: device, CPU pin, threads (see sda.numerics)
        "numerics": numerics_status(result.device),
        **versions(),
        **(extra or {}),
    }


def memorization_record(result: GenerationResult) -> dict[str, Any]:
    """The sidecar's `memorization` record (sda.memorization), or why there is none."""
    if result.memorization is not None:
        return result.memorization.to_dict()
    return {"status": UNAVAILABLE, "reason": "not checked (a result made outside the pipeline)"}


# ------------------------------------------------------------------------------------------------
# Saving and verifying


def save_result(result: GenerationResult, folder: str | Path, extra: dict[str, Any] | None = None) -> SavedOutput:
    """Write `result` into `folder` (made if missing) as an audio file and its sidecar, sidecar
    first, each atomically and never overwriting: a taken name gets `_2`, `_3` ... Raises a
    one-line OutputError when the folder cannot be written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = result.config
    identity = output_identity(cfg, result.seed, result.model_sha256)
    encoded = encode_audio(
        result.audio,
        result.sample_rate,
        cfg.export.format,
        cfg.export.bit_depth,
        tags=audio_tags(result, identity),
        dither_seed=int(identity, 16) & 0xFFFFFFFF,
        ogg_quality=getattr(cfg.export, "quality", 0.7),
        true_peak_ceiling_dbtp=cfg.export.true_peak_dbtp if cfg.export.normalize == Normalize.loudness else None,
    )
    audio_path, sidecar_path = reserve_output_paths(folder, datetime.now(UTC), result.seed, cfg.export.format)
    record = sidecar_record(result, identity, audio_path.name, encoded, extra)
    write_sidecar(sidecar_path, record)
    write_atomic(audio_path, encoded.data)
    return SavedOutput(audio_path=audio_path, sidecar_path=sidecar_path, identity=identity, record=record)


# The reason `verify_output` gives for a sidecar whose audio is not there (and nothing worse).
AUDIO_MISSING = "audio file missing"


@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str
    sidecar_path: Path
    audio_path: Path | None
    record: dict[str, Any] | None


def claimed_identities(record: dict[str, Any] | None) -> set[str]:
    """The identities a sidecar record claims: its `identity` field and what its
    `identity_parameters` hash to (the two differ when one of them was edited)."""
    if not isinstance(record, dict):
        return set()
    claims = {record["identity"]} if isinstance(record.get("identity"), str) else set()
    parameters = record.get("identity_parameters")
    if isinstance(parameters, dict):
        try:
            claims.add(identity_of_parameters(parameters))
        except (TypeError, ValueError):  # values JSON cannot hold: it claims nothing by them
            pass
    return claims


def verify_output(sidecar_path: Path) -> Verification:
    """Is this output complete? Its sidecar parses, its `identity` is what its
    `identity_parameters` hash to (a stored identity is never trusted), its audio exists, and the
    audio's frame count, rate, channels and sha256 match the sidecar. Never raises for a bad output."""
    sidecar_path = Path(sidecar_path)

    def fail(reason: str, audio: Path | None = None, record: dict | None = None) -> Verification:
        return Verification(False, reason, sidecar_path, audio, record)

    try:
        record = read_sidecar(sidecar_path)
        info = record["file"]
        name, frames, sha = info["name"], int(info["frames"]), info["sha256"]
        rate, channels = int(info["sample_rate"]), int(info["channels"])
    except FileNotFoundError:
        return fail("sidecar missing")
    except (ValueError, KeyError, TypeError, OSError) as error:
        return fail(f"sidecar unparsable: {error}")
    audio = sidecar_path.parent / name
    if Path(name).name != name:
        return fail(f"sidecar names a file outside its folder: {name!r}", None, record)
    identity_problem = _identity_problem(record)
    if identity_problem:
        return fail(identity_problem, audio, record)
    if not audio.is_file():
        return fail(AUDIO_MISSING, audio, record)
    try:
        found = sf.info(str(audio))
    except (RuntimeError, sf.LibsndfileError) as error:
        return fail(f"audio unreadable: {error}", audio, record)
    if found.frames != frames:
        return fail(f"frame count {found.frames} != {frames}", audio, record)
    if found.samplerate != rate or found.channels != channels:
        return fail(f"{found.samplerate} Hz x {found.channels} channels != {rate} Hz x {channels}", audio, record)
    if file_sha256(audio) != sha:
        return fail("checksum mismatch", audio, record)
    return Verification(True, "verified", sidecar_path, audio, record)


def _identity_problem(record: dict[str, Any]) -> str | None:
    identity, parameters = record.get("identity"), record.get("identity_parameters")
    if not isinstance(identity, str) or not isinstance(parameters, dict):
        return "sidecar has no identity and identity parameters"
    try:
        recomputed = identity_of_parameters(parameters)
    except (TypeError, ValueError) as error:
        return f"identity parameters unreadable: {error}"
    if recomputed != identity:
        return f"identity {identity} is not what its identity parameters hash to ({recomputed})"
    return None


def check_sidecar_format(folder: Path) -> None:
    """Refuse, in one line, a folder whose outputs an older sda made (sidecar format below
    SIDECAR_FORMAT_VERSION): their identities were computed differently, so a resume would take
    every one of them for broken. One sidecar per job folder is read; a folder is written by one
    version. Raises OutputError."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for job in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        sidecar = next(job.glob(SIDECAR_GLOB), None)
        if sidecar is None:
            continue
        try:
            version = read_sidecar(sidecar).get("sidecar_format_version", 1)
        except (OSError, ValueError):
            continue  # a broken sidecar is the runner's to report
        if isinstance(version, int) and version < SIDECAR_FORMAT_VERSION:
            raise OutputError(
                f"{job} holds outputs of sidecar format {version}, made by an older sda: resume it with that "
                f"version, or render into a new folder (this sda writes format {SIDECAR_FORMAT_VERSION})"
            )
