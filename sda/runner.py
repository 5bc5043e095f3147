"""One job of `sda.run`: a validated RunConfig and an output folder in, files and an outcome out.

- Stale temporary files from a killed process are removed first, and so are sidecars whose
  audio file is missing (sda writes the sidecar first: a process killed between the two writes
  leaves one behind).
- Outputs already in the folder are checked (`verify_output`); a verified output with the same
  identity is skipped, so rerunning a job into its folder makes only what is missing or broken.
  An output that fails verification (truncated, edited, its identity field changed) is left
  where it is until the job makes the identity it claims: then the broken pair is moved into
  `broken/` first (never deleted, never overwritten), so a folder never holds two audio files
  for one identity.
- Only the missing seeds are generated. An item's audio does not depend on the batch it is
  made in (see sda.pipeline), so a resumed job writes the same bytes as an uninterrupted one.
- One failing item (an exception, non-finite or silent audio) is recorded with its reason and
  never written as a finished file; the others go on. A job never raises and never exits:
  its outcome is returned and written to `outcome.json`.
- SIGINT or SIGTERM (see sda.interruption) abandons the item being rendered, but an output
  being written is finished first; the outcome records the signal and what was done, and is
  returned as any other (`JobOutcome.interrupted`).
- With `quality.reject_copies=true`, an output the memorisation check finds to be a near copy of
  training audio is written and recorded as "rejected" with the reason, not "done"
  (sda.memorisation says why it is written); an output already present is judged again from
  the distance its sidecar records.
- Progress: a tqdm bar over the items when stderr is a terminal (nothing otherwise, so cron
  mail and log files stay clean), and one log line per file written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sda.config import GenerationConfig
from sda.errors import CheckpointError, OutputError, SdaError
from sda.files import write_atomic
from sda.interruption import Interrupted, deferred
from sda.locking import folder_lock, holds
from sda.memorisation import recorded_rejection
from sda.model import LoadedModel, load_model, missing_checkpoint_message, resolve_checkpoint
from sda.outputs import (
    AUDIO_MISSING,
    BROKEN_DIR,
    OUTCOME_FILE,
    SIDECAR_GLOB,
    Verification,
    claimed_identities,
    output_identity,
    remove_stale_temporaries,
    save_result,
    verify_output,
)
from sda.pipeline import GenerationPipeline, GenerationResult

log = logging.getLogger("sda.run")

SILENT_PEAK_DBFS = -60.0
# Sidecar key of the run token (see JobOutcome.run_token): which launch of sda.run made an output,
# so that a run's summary can count what a job made even when its outcome.json is missing.
RUN_TOKEN_KEY = "run_token"
ITEM_STATUSES = ("done", "skipped", "failed", "rejected")


@dataclass
class ItemOutcome:
    seed: int
    identity: str
    status: str  # "done" | "skipped" | "failed" | "rejected" (a near copy, see sda.memorisation)
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
    run_token: str | None = None  # which launch of sda.run made this outcome (see sda.summary)
    job_num: int | None = None  # Hydra's job number in a sweep
    config: dict[str, Any] | None = None  # the job's generation settings (what failed items were)
    planned: int = 0  # how many outputs the job was asked for
    interrupted: str | None = None  # "SIGINT" or "SIGTERM" when a signal stopped the job

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def not_made(self) -> int:
        """Outputs asked for that were neither made, skipped nor failed (not reached)."""
        return max(self.planned - len(self.items), 0)

    @property
    def failed(self) -> bool:
        return self.error is not None or self.count("failed") > 0

    def summary(self) -> str:
        text = f"{self.count('done')} done, {self.count('skipped')} skipped, {self.count('failed')} failed"
        if self.count("rejected"):
            text += f", {self.count('rejected')} rejected"
        if self.interrupted:
            text += f"; interrupted by {self.interrupted}, {self.not_made} not made"
        return text + (f"; job failed: {self.error}" if self.error else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "counts": {s: self.count(s) for s in ITEM_STATUSES},
            "not_made": self.not_made,
        }


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int, device: str) -> LoadedModel:
    return load_model(path, device)


def get_model(checkpoint: str, device: torch.device, base_dir: Path) -> LoadedModel:
    """The model for a checkpoint name or path, loaded once per process (a changed file on disk
    is loaded again)."""
    path = resolve_checkpoint(checkpoint, base_dir)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise CheckpointError(
            f"model.checkpoint={checkpoint!r}: {missing_checkpoint_message(checkpoint, base_dir)}"
        ) from None
    return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(device))


@dataclass
class FolderOutputs:
    """What `scan_outputs` found in a job folder."""

    verified: dict[str, Verification]  # identity -> the output that verifies
    broken: dict[str, list[Verification]]  # identity -> outputs that fail verification and claim it


def scan_outputs(folder: Path) -> FolderOutputs:
    """Check every output in `folder`. A sidecar whose audio file is missing is deleted (an
    interrupted write, see the module docstring); other outputs that fail verification are
    logged and left where they are, listed under each identity they claim."""
    found = FolderOutputs({}, {})
    for sidecar in sorted(folder.glob(SIDECAR_GLOB)):
        check = verify_output(sidecar)
        if check.ok and check.record is not None:
            found.verified[check.record["identity"]] = check
        elif check.reason == AUDIO_MISSING:
            sidecar.unlink(missing_ok=True)
            log.info("removed %s: its audio file was never written (an interrupted run)", sidecar.name)
        else:
            log.warning("not counted as done: %s (%s)", sidecar.name, check.reason)
            for identity in claimed_identities(check.record):
                found.broken.setdefault(identity, []).append(check)
    return found


def outputs_made_by(folder: Path, run_token: str) -> list[Verification]:
    """The outputs in `folder` that verify and were made by the launch of sda.run whose token
    is `run_token`. Reads and deletes nothing."""
    made = []
    for sidecar in sorted(Path(folder).glob(SIDECAR_GLOB)):
        check = verify_output(sidecar)
        if check.ok and check.record is not None and check.record.get(RUN_TOKEN_KEY) == run_token:
            made.append(check)
    return made


def set_aside_broken(check: Verification, folder: Path) -> Path:
    """Move a broken output's sidecar, then its audio, into `folder/broken/` (a numbered folder
    inside it when a name is taken there); returns where they went. Sidecar first: a process
    killed between the two moves leaves the audio without a sidecar, which the report lists as
    broken and resume leaves alone (a sidecar left without its audio would be deleted)."""
    names = [check.sidecar_path.name] + ([check.audio_path.name] if check.audio_path else [])
    target, n = folder / BROKEN_DIR, 1
    while any((target / name).exists() for name in names):
        n += 1
        target = folder / BROKEN_DIR / str(n)
    try:
        target.mkdir(parents=True, exist_ok=True)
        os.rename(check.sidecar_path, target / check.sidecar_path.name)
        if check.audio_path is not None and check.audio_path.exists():
            os.rename(check.audio_path, target / check.audio_path.name)
    except OSError as error:
        raise OutputError(f"cannot move broken output {check.sidecar_path.name} into {target}: {error}") from None
    return target


def _failure_reason(result: GenerationResult) -> str | None:
    metrics = result.metrics
    if not metrics.finite:
        return "non-finite samples in the generated audio"
    if metrics.peak_dbfs is None or metrics.peak_dbfs < SILENT_PEAK_DBFS or metrics.rms_dbfs is None:
        return f"silent audio (peak {metrics.peak_dbfs} dBFS)"
    return None


def _nearest_existing(folder: Path) -> Path:
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_output_folder(folder: Path, needed_bytes: int = 0) -> None:
    """Raise a one-line OutputError unless `folder` can be created (or exists) and written, and
    its file system has `needed_bytes` free. Creates nothing: pre-flight calls this before any
    job starts. Audio already in the folder (a resumed run) is subtracted from `needed_bytes`."""
    folder = Path(folder)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"cannot create output folder {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == folder.absolute():
            raise OutputError(f"output folder {folder} is not writable")
        raise OutputError(f"cannot create output folder {folder}: {existing} is not writable")
    if folder.is_dir():
        needed_bytes -= sum(
            p.stat().st_size
            for p in folder.rglob("gen_*")
            if p.suffix != ".json" and p.is_file() and BROKEN_DIR not in p.relative_to(folder).parts
        )
    free = shutil.disk_usage(existing).free
    if needed_bytes > free:
        raise OutputError(
            f"not enough disk space for {folder}: the outputs need about {_size(needed_bytes)}, {_size(free)} free"
        )


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.0f} MB"


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output folder {folder}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable")


def estimate_output_bytes(config: GenerationConfig) -> int:
    """Upper estimate of one job's audio bytes (sidecars are a few kB). A one-shot is counted at
    its longest (duration_s, at most the longest model window)."""
    bytes_per_sample = {16: 2, 24: 3, 32: 4}[config.export.bit_depth]
    frames = round(config.chunking.longest_output_s(config.duration_s) * config.export.sample_rate)
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
    run_token: str | None = None,
    job_num: int | None = None,
) -> JobOutcome:
    """Generate `config.count` outputs into `output_dir`, skipping verified ones. Never raises
    for a failed item or job, nor for SIGINT/SIGTERM while sda.interruption handles them (but
    for one that arrives before the job holds its folder): the outcome says what happened (and
    is written to outcome.json). Each output's sidecar records `run_token` when given."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    base_dir = Path(base_dir or Path.cwd())
    outcome = JobOutcome(
        output_dir=str(output_dir),
        overrides=list(overrides),
        run_token=run_token,
        job_num=job_num,
        config=config.generation_fields(),
        planned=config.count,
    )
    if run_token is not None:
        extra_sidecar = {**(extra_sidecar or {}), RUN_TOKEN_KEY: run_token}
    with contextlib.ExitStack() as stack:
        try:
            try:
                _check_writable(output_dir)
                stack.enter_context(folder_lock(output_dir))
            except SdaError as error:  # not writable, or another process owns it: leave the folder alone
                outcome.error = str(error)
                log.error("%s", error)
                return outcome
            try:
                _run(config, output_dir, base_dir, outcome, extra_sidecar, show_progress)
            except SdaError as error:
                outcome.error = str(error)
                log.error("%s", error)
            except Exception as error:  # a job must end with its outcome recorded, whatever broke
                outcome.error = f"{type(error).__name__}: {error}"
                log.exception("job failed")
        except Interrupted as stop:
            if not holds(output_dir):  # stopped before the folder was the job's: nothing to record
                raise
            outcome.interrupted = stop.signal_name
        # A signal from here on is held until the outcome is recorded (a second one ends the process).
        with deferred(raise_at_end=False):
            outcome.elapsed_s = time.perf_counter() - started
            write_outcome(outcome)
    return outcome


def write_outcome(outcome: JobOutcome) -> None:
    """Record a job's outcome in its folder as outcome.json (what the sweep summary reads)."""
    output_dir = Path(outcome.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(output_dir / OUTCOME_FILE, json.dumps(outcome.to_dict(), indent=2).encode(), replace=True)
    except (OSError, SdaError) as error:
        log.error("could not record the job outcome in %s: %s", output_dir, error)
    log.info("%s: %s", output_dir, outcome.summary())


def _run(
    config: GenerationConfig,
    output_dir: Path,
    base_dir: Path,
    outcome: JobOutcome,
    extra_sidecar: dict[str, Any] | None,
    show_progress: bool | None,
) -> None:
    for stale in remove_stale_temporaries(output_dir):
        log.info("removed stale temporary file %s", stale.name)
    check_output_folder(output_dir, estimate_output_bytes(config))
    device = config.resolved_device()  # a one-line ConfigError where the device does not exist
    model = get_model(config.model.checkpoint, device, base_dir)
    pipeline = GenerationPipeline(model, config, device)
    found = scan_outputs(output_dir)
    existing = found.verified
    identities = {seed: output_identity(config, seed, model.sha256) for seed in config.seeds}

    missing = [seed for seed in config.seeds if identities[seed] not in existing]
    for seed in config.seeds:
        if seed not in missing:
            outcome.items.append(_skipped_item(seed, identities[seed], existing[identities[seed]], config))

    show = sys.stderr.isatty() if show_progress is None else show_progress
    with tqdm(
        total=len(identities), desc=output_dir.name, unit="file", disable=not show, dynamic_ncols=True
    ) as progress:
        progress.update(len(identities) - len(missing))
        # On a terminal, log lines are written above the bar instead of breaking it.
        with logging_redirect_tqdm() if show else contextlib.nullcontext():
            for batch in _plan_batches(missing, pipeline.batch_size):
                _write_batch(batch, pipeline, identities, output_dir, outcome, extra_sidecar, found.broken)
                progress.update(len(batch))


def _write_batch(
    batch: list[int],
    pipeline: GenerationPipeline,
    identities: dict[int, str],
    output_dir: Path,
    outcome: JobOutcome,
    extra_sidecar: dict[str, Any] | None,
    broken: dict[str, list[Verification]],
) -> None:
    """Generate a batch of missing seeds and write the items that pass."""
    for result in _generate_isolated(pipeline, batch, identities, outcome):
        reason = _failure_reason(result)
        if reason:
            outcome.items.append(ItemOutcome(result.seed, identities[result.seed], "failed", reason))
            log.error("seed %d failed: %s", result.seed, reason)
            continue
        # A signal now lets the output be written (and recorded) whole: see sda.interruption.
        with deferred():
            _write_item(result, identities[result.seed], output_dir, outcome, extra_sidecar, broken)


def _write_item(
    result: GenerationResult,
    identity: str,
    output_dir: Path,
    outcome: JobOutcome,
    extra_sidecar: dict[str, Any] | None,
    broken: dict[str, list[Verification]],
) -> None:
    """Write one output that passed its checks, after moving aside broken outputs that claim
    its identity, and record it as done."""
    for check in broken.pop(identity, []):
        if not check.sidecar_path.exists():  # moved already: it claimed another identity too
            continue
        try:
            where = set_aside_broken(check, output_dir)
        except OutputError as error:  # never two audio files for one identity: this item waits
            outcome.items.append(ItemOutcome(result.seed, identity, "failed", str(error)))
            log.error("seed %d failed: %s", result.seed, error)
            return
        log.warning(
            "moved broken output %s (%s) into %s before making identity %s again",
            check.sidecar_path.name,
            check.reason,
            where.relative_to(output_dir),
            identity,
        )
    saved = save_result(result, output_dir, extra_sidecar)
    metrics = result.metrics
    rejected = result.memorisation is not None and result.memorisation.rejected
    outcome.items.append(
        ItemOutcome(
            result.seed,
            saved.identity,
            "rejected" if rejected else "done",
            result.memorisation.verdict if rejected and result.memorisation is not None else "",
            saved.audio_path.name,
            saved.sidecar_path.name,
            metrics.rating,
            metrics.peak_dbfs,
            metrics.loudness_lufs,
        )
    )
    log.info(
        "wrote %s (%s: %s)%s",
        saved.audio_path.name,
        metrics.rating,
        metrics.rating_reason,
        ", recorded as rejected (quality.reject_copies)" if rejected else "",
    )


def _skipped_item(seed: int, identity: str, check: Verification, config: GenerationConfig) -> ItemOutcome:
    record = check.record or {}
    quality = record.get("quality", {})
    rejection = recorded_rejection(record, config.quality)
    return ItemOutcome(
        seed,
        identity,
        "rejected" if rejection else "skipped",
        f"verified output already present; {rejection}" if rejection else "verified output already present",
        record["file"]["name"],
        check.sidecar_path.name,
        quality.get("rating"),
        quality.get("peak_dbfs"),
        quality.get("loudness_lufs"),
    )


def _generate_isolated(
    pipeline: GenerationPipeline,
    missing: list[int],
    identities: dict[int, str],
    outcome: JobOutcome,
) -> list[GenerationResult]:
    """Results for a batch of missing seeds, generated together; if that raises, each seed is
    tried alone so one bad item cannot take the others down."""
    try:
        return pipeline.generate(missing)
    except (RuntimeError, ValueError, ArithmeticError) as error:
        log.warning("batch %s failed (%s); retrying its items one by one", missing, error)
    results = []
    for seed in missing:
        try:
            results.extend(pipeline.generate([seed]))
        except (RuntimeError, ValueError, ArithmeticError) as error:
            outcome.items.append(ItemOutcome(seed, identities[seed], "failed", f"{type(error).__name__}: {error}"))
            log.error("seed %d failed: %s", seed, error)
    return results
