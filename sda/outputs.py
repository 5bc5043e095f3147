"""Turning a GenerationResult into files: identity, sidecar record, audio, in that order.

An output's identity is a hash of everything that decides its audio: the checkpoint's sha256,
the seed, and the resolved generation parameters (duration, chunking, stereo, export, phase). It
leaves out what only decides how the audio is computed (device, batch size) or which job made
it (count, the job's first seed). Resume compares identities, never names or times.

Order on disk (see sda.export): encode in memory -> write the sidecar (it records the audio's
frame count and sha256) -> write the audio. Both writes are atomic; an output counts as done
only when `verify_output` finds the audio matching its sidecar.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sda.config import GenerationConfig
from sda.export import encode_audio, reserve_output_paths, write_bytes_atomic, write_sidecar
from sda.pipeline import GenerationResult
from sda.versions import sda_version, versions

# 2: identities and sidecar configs hold only the chosen option's keys of each group.
SIDECAR_FORMAT_VERSION = 2
# Parameters that change an output's audio (besides the seed and the checkpoint).
IDENTITY_FIELDS = ("duration_s", "chunking", "stereo", "export", "phase")


def identity_parameters(config: GenerationConfig, seed: int, model_sha256: str) -> dict[str, Any]:
    generation = config.generation_fields()
    return {"checkpoint_sha256": model_sha256, "seed": int(seed), **{k: generation[k] for k in IDENTITY_FIELDS}}


def output_identity(config: GenerationConfig, seed: int, model_sha256: str) -> str:
    """Stable 16-hex-digit identity of the output `seed` makes under `config` and the model."""
    canonical = json.dumps(identity_parameters(config, seed, model_sha256), sort_keys=True, separators=(",", ":"))
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
    return {
        "title": f"sda {result.model_name} {seeds}",
        "comment": (
            f"identity {identity}; {cfg.chunking.mode} chunking, {cfg.stereo.mode} stereo, "
            f"{cfg.duration_s:g} s; model sha256 {result.model_sha256[:12]}"
        ),
        "software": f"sda {sda_version()}",
    }


def sidecar_record(
    result: GenerationResult,
    identity: str,
    audio_name: str,
    encoded: Any,
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
        },
        "seeds": {"left": result.seed, "right": result.right_seed},
        "seed": result.seed,
        "model": {"name": result.model_name, "sha256": result.model_sha256, "checkpoint": cfg.model.checkpoint},
        "config": cfg.generation_fields(),
        "duration_s": cfg.duration_s,
        "sample_rate": result.sample_rate,
        "bit_depth": cfg.export.bit_depth,
        "channels": result.channels,
        "device": result.device,
        "started_at": result.started_at.isoformat(),
        "finished_at": result.finished_at.isoformat(),
        "elapsed_s": result.elapsed_s,
        "timings_s": result.timings_s,
        "quality": result.metrics.to_dict(),
        **versions(),
        **(extra or {}),
    }


def save_result(result: GenerationResult, folder: Path, extra: dict[str, Any] | None = None) -> SavedOutput:
    """Encode, then write the sidecar and the audio (atomically, never overwriting) into `folder`."""
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
    )
    audio_path, sidecar_path = reserve_output_paths(folder, datetime.now(UTC), result.seed, cfg.export.format)
    record = sidecar_record(result, identity, audio_path.name, encoded, extra)
    write_sidecar(sidecar_path, record)
    write_bytes_atomic(audio_path, encoded.data)
    return SavedOutput(audio_path=audio_path, sidecar_path=sidecar_path, identity=identity, record=record)
