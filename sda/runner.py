"""One job of `sda.run`: a validated RunConfig and an output folder in, files and an outcome out.

- Stale temporary files from a killed process are removed first.
- Outputs already in the folder are checked (`verify_output`); a verified output with the same
  identity is skipped, so rerunning a job into its folder makes only what is missing or broken.
- Seeds are processed in batches at fixed positions of the job's seed list, and a batch is
  regenerated whole when any item of it is missing: a resumed batch then computes exactly what
  the uninterrupted one did, so its files are byte-identical on the CPU.
- One failing item (an exception, non-finite or silent audio) is recorded with its reason and
  never written as a finished file; the others go on. A job never raises and never exits:
  its outcome is returned and written to `outcome.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from sda.config import GenerationConfig
from sda.errors import OutputError, SdaError
from sda.export import read_sidecar, remove_stale_temporaries, verify_output, write_bytes_atomic
from sda.model import LoadedModel, load_model, resolve_checkpoint
from sda.outputs import output_identity, save_result
from sda.pipeline import GenerationPipeline, GenerationResult

log = logging.getLogger("sda.run")

OUTCOME_FILE = "outcome.json"
SILENT_PEAK_DBFS = -60.0


@dataclass
class ItemOutcome:
    seed: int
    identity: str
    status: str  # "done" | "skipped" | "failed"
    reason: str = ""
    file: str | None = None
    sidecar: str | None = None
    rating: str | None = None
    peak_dbfs: float | None = None
    loudness_lufs: float | None = None


@dataclass
class JobOutcome:
    output_dir: str
    items: list[ItemOutcome] = field(default_factory=list)
    error: str | None = None  # a job-level failure (disk full, model missing, ...)
    elapsed_s: float = 0.0
    overrides: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def failed(self) -> bool:
        return self.error is not None or self.count("failed") > 0

    def summary(self) -> str:
        text = f"{self.count('done')} done, {self.count('skipped')} skipped, {self.count('failed')} failed"
        return text + (f"; job failed: {self.error}" if self.error else "")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "counts": {s: self.count(s) for s in ("done", "skipped", "failed")}}


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int, device: str) -> LoadedModel:
    return load_model(path, device)


def get_model(checkpoint: str, device: torch.device, base_dir: Path) -> LoadedModel:
    """The model for a checkpoint name or path, loaded once per process (a changed file on disk
    is loaded again)."""
    path = resolve_checkpoint(checkpoint, [base_dir / "models"])
    if not path.is_absolute() and ("/" in checkpoint or checkpoint.endswith(".pt")):
        path = base_dir / path
    try:
        stat = path.stat()
    except FileNotFoundError:
        return load_model(path, device)  # raises the one-line CheckpointError
    return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(device))


def verified_outputs(folder: Path) -> dict[str, Path]:
    """identity -> sidecar path for every output in `folder` whose audio matches its sidecar.
    Outputs that fail verification are logged and left where they are (never deleted)."""
    found: dict[str, Path] = {}
    for sidecar in sorted(folder.glob("gen_*.json")):
        check = verify_output(sidecar)
        if check.ok and check.record is not None and "identity" in check.record:
            found[check.record["identity"]] = sidecar
        else:
            log.warning("not counted as done: %s (%s)", sidecar.name, check.reason)
    return found


def _failure_reason(result: GenerationResult) -> str | None:
    metrics = result.metrics
    if not metrics.finite:
        return "non-finite samples in the generated audio"
    if metrics.peak_dbfs is None or metrics.peak_dbfs < SILENT_PEAK_DBFS or metrics.rms_dbfs is None:
        return f"silent audio (peak {metrics.peak_dbfs} dBFS)"
    return None


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output folder {folder}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable")


def estimate_output_bytes(config: GenerationConfig) -> int:
    """Upper estimate of one job's audio bytes (sidecars are a few kB)."""
    bytes_per_sample = {16: 2, 24: 3, 32: 4}[config.export.bit_depth]
    frames = round(config.duration_s * config.export.sample_rate)
    return config.count * (frames * config.stereo.channels * bytes_per_sample + 16_384)


def _plan_batches(seeds: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(seeds[i : i + batch_size]) for i in range(0, len(seeds), batch_size)]


def run_job(
    config: GenerationConfig,
    output_dir: Path,
    base_dir: Path | None = None,
    overrides: Sequence[str] = (),
    extra_sidecar: dict[str, Any] | None = None,
    show_progress: bool | None = None,
) -> JobOutcome:
    """Generate `config.count` outputs into `output_dir`, skipping verified ones. Never raises
    for a failed item or job: the outcome says what happened (and is written to outcome.json)."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    base_dir = Path(base_dir or Path.cwd())
    outcome = JobOutcome(output_dir=str(output_dir), overrides=list(overrides))
    try:
        _run(config, output_dir, base_dir, outcome, extra_sidecar, show_progress)
    except SdaError as error:
        outcome.error = str(error)
        log.error("%s", error)
    except Exception as error:  # a job must end with its outcome recorded, whatever broke
        outcome.error = f"{type(error).__name__}: {error}"
        log.exception("job failed")
    outcome.elapsed_s = time.perf_counter() - started
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        target = output_dir / OUTCOME_FILE
        target.unlink(missing_ok=True)
        write_bytes_atomic(target, json.dumps(outcome.to_dict(), indent=2).encode())
    except (OSError, SdaError) as error:
        log.error("could not record the job outcome in %s: %s", output_dir, error)
    log.info("%s: %s", output_dir, outcome.summary())
    return outcome


def _run(
    config: GenerationConfig,
    output_dir: Path,
    base_dir: Path,
    outcome: JobOutcome,
    extra_sidecar: dict[str, Any] | None,
    show_progress: bool | None,
) -> None:
    _check_writable(output_dir)
    for stale in remove_stale_temporaries(output_dir):
        log.info("removed stale temporary file %s", stale.name)
    free = shutil.disk_usage(output_dir).free
    needed = estimate_output_bytes(config)
    if needed > free:
        raise OutputError(
            f"not enough disk space in {output_dir}: this job needs about {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB free"
        )
    device = config.resolved_device()
    model = get_model(config.model.checkpoint, device, base_dir)
    pipeline = GenerationPipeline(model, config, device)
    existing = verified_outputs(output_dir)
    identities = {seed: output_identity(config, seed, model.sha256) for seed in config.seeds}

    progress = tqdm(
        total=len(identities),
        desc=output_dir.name,
        unit="file",
        disable=(not sys.stderr.isatty()) if show_progress is None else not show_progress,
        dynamic_ncols=True,
    )
    for batch in _plan_batches(config.seeds, pipeline.batch_size):
        missing = [seed for seed in batch if identities[seed] not in existing]
        for seed in batch:
            if seed not in missing:
                sidecar = existing[identities[seed]]
                outcome.items.append(_skipped_item(seed, identities[seed], sidecar))
        progress.update(len(batch) - len(missing))
        if not missing:
            continue
        for result in _generate_isolated(pipeline, batch, missing, identities, outcome):
            reason = _failure_reason(result)
            if reason:
                outcome.items.append(ItemOutcome(result.seed, identities[result.seed], "failed", reason))
                log.error("seed %d failed: %s", result.seed, reason)
                progress.update(1)
                continue
            saved = save_result(result, output_dir, extra_sidecar)
            metrics = result.metrics
            outcome.items.append(
                ItemOutcome(
                    result.seed, saved.identity, "done", "", saved.audio_path.name, saved.sidecar_path.name,
                    metrics.rating, metrics.peak_dbfs, metrics.loudness_lufs,
                )
            )
            log.info(
                "wrote %s (%s: %s)", saved.audio_path.name, metrics.rating, metrics.rating_reason
            )
            progress.update(1)
    progress.close()


def _skipped_item(seed: int, identity: str, sidecar: Path) -> ItemOutcome:
    record = read_sidecar(sidecar)
    quality = record.get("quality", {})
    return ItemOutcome(
        seed, identity, "skipped", "verified output already present", record["file"]["name"], sidecar.name,
        quality.get("rating"), quality.get("peak_dbfs"), quality.get("loudness_lufs"),
    )


def _generate_isolated(
    pipeline: GenerationPipeline,
    batch: list[int],
    missing: list[int],
    identities: dict[int, str],
    outcome: JobOutcome,
) -> list[GenerationResult]:
    """Results for the missing seeds of a batch. The whole batch is generated (see the module
    docstring); if it raises, each missing seed is tried alone so one bad item cannot take the
    others down."""
    try:
        results = pipeline.generate(batch)
        return [r for r in results if r.seed in missing]
    except (RuntimeError, ValueError, ArithmeticError) as error:
        log.warning("batch %s failed (%s); retrying its items one by one", batch, error)
    results = []
    for seed in missing:
        try:
            results.extend(pipeline.generate([seed]))
        except (RuntimeError, ValueError, ArithmeticError) as error:
            outcome.items.append(ItemOutcome(seed, identities[seed], "failed", f"{type(error).__name__}: {error}"))
            log.error("seed %d failed: %s", seed, error)
    return results
