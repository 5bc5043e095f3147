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
- Writing overlaps rendering: finished items are encoded, hashed and written (sidecar first, as
  always) by a bounded pool of writer threads (sda.write_pool) while the next batch renders; a
  slow disk holds the rendering back rather than filling memory. Outputs are recorded as done in
  the order they were rendered, once written.
- SIGINT or SIGTERM (see sda.interruption) abandons the item being rendered and the writes not yet
  started, but the writes already started are finished first; the outcome records the signal and
  what was done, and is returned as any other (`JobOutcome.interrupted`). A write that fails
  (disk full) ends the job the same way: what was written is recorded, then the error.
- With `quality.reject_copies=true`, an output the memorization check finds to be a near copy of
  training audio is written and recorded as "rejected" with the reason, not "done"
  (sda.memorization says why it is written); an output already present is judged again from
  the distance its sidecar records.
- Progress: a tqdm bar over the items when stderr is a terminal (nothing otherwise, so cron
  mail and log files stay clean), and one log line per file written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from sda.config import GenerationConfig, OneshotChunking
from sda.dsp.quality import RED_SILENT_PEAK_DBFS
from sda.encode import EXTENSIONS
from sda.errors import CheckpointError, OutputError, SdaError
from sda.estimate import size_text
from sda.files import write_json_atomic
from sda.interruption import Interrupted, deferred
from sda.locking import folder_lock, holds
from sda.memorization import recorded_rejection
from sda.model import LoadedModel, load_model, missing_checkpoint_message, resolve_checkpoint
from sda.outputs import (
    AUDIO_MISSING,
    BROKEN_DIR,
    OUTCOME_FILE,
    SIDECAR_GLOB,
    SavedOutput,
    Verification,
    claimed_identities,
    output_identity,
    remove_stale_temporaries,
    save_result,
    verify_output,
)
from sda.parallel import host_cpus, parallel_map
from sda.pipeline import STAGES, GenerationPipeline, GenerationResult
from sda.report.pictures import write_picture
from sda.report.spectrogram import SPECTROGRAM_PICTURE
from sda.write_pool import WritePool, Written

log = logging.getLogger("sda.run")

AUDIO_SUFFIXES = frozenset(EXTENSIONS.values())

# Sidecar key of the run token (see JobOutcome.run_token): which launch of sda.run made an output,
# so that a run's summary can count what a job made even when its outcome.json is missing.
RUN_TOKEN_KEY = "run_token"
ITEM_STATUSES = ("done", "skipped", "failed", "rejected")


@dataclass
class ItemOutcome:
    seed: int
    identity: str
    status: str  # "done" | "skipped" | "failed" | "rejected" (a near copy, see sda.memorization)
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
    timings_s: dict[str, float] = field(default_factory=dict)  # where the job's time went (see _run)

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
    for check in parallel_map(verify_output, sorted(folder.glob(SIDECAR_GLOB))):
        sidecar = check.sidecar_path
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
    for check in parallel_map(verify_output, sorted(Path(folder).glob(SIDECAR_GLOB))):
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
    if metrics.peak_dbfs is None or metrics.peak_dbfs < RED_SILENT_PEAK_DBFS or metrics.rms_dbfs is None:
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
    if folder.is_dir():  # the audio already there counts (not sidecars, pictures or broken outputs)
        needed_bytes -= sum(
            p.stat().st_size
            for p in folder.rglob("gen_*")
            if p.suffix in AUDIO_SUFFIXES and p.is_file() and BROKEN_DIR not in p.relative_to(folder).parts
        )
    free = shutil.disk_usage(existing).free
    if needed_bytes > free:
        raise OutputError(
            f"not enough disk space for {folder}: "
            f"the outputs need about {size_text(needed_bytes)}, {size_text(free)} free"
        )


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
        write_json_atomic(output_dir / OUTCOME_FILE, outcome.to_dict(), replace=True)
    except (OSError, SdaError, ValueError) as error:  # ValueError: a value JSON cannot hold
        log.error("could not record the job outcome in %s: %s", output_dir, error)
    log.info("%s: %s", output_dir, outcome.summary())


def write_workers(device: torch.device, configured: int = 0) -> int:
    """Writer threads for a job on `device` (`configured`: the config's `writers`, 0 = chosen
    here). With a GPU rendering, the host's cores are free but for the thread that drives it: one
    writer per other core. On a CPU the render already keeps every core busy, and a writer thread
    beside it only contends with it (for the cores and for Python's lock): the render's own thread
    writes each batch's outputs before it renders the next (0 threads). Measured on two cores,
    `python -m sda.bench --end-to-end --writers 0,1`."""
    if configured:
        return configured
    return max(1, host_cpus() - 1) if device.type != "cpu" else 0


def _run(
    config: GenerationConfig,
    output_dir: Path,
    base_dir: Path,
    outcome: JobOutcome,
    extra_sidecar: dict[str, Any] | None,
    show_progress: bool | None,
) -> None:
    """The job's work. Records where its time went in `outcome.timings_s`: `load_s` (model and
    pipeline), `scan_s` (verifying what the folder holds), `render_s` (the pipeline, with its
    stages' sums `decode_s`, `phase_s`, `dsp_s`), and the writers' `write_busy_s` (summed over
    threads), `write_wall_s` (while any wrote), `write_held_s` (rendering held back by a full
    queue) and `write_drained_s` (waiting for the last writes)."""
    timings = outcome.timings_s
    clock = time.perf_counter()
    for stale in remove_stale_temporaries(output_dir):
        log.info("removed stale temporary file %s", stale.name)
    check_output_folder(output_dir, estimate_output_bytes(config))
    device = config.resolved_device()  # a one-line ConfigError where the device does not exist
    model = get_model(config.model.checkpoint, device, base_dir)
    # The report's pictures are computed with the batch where its audio is (a PCM file holds the
    # rendered samples to within its last bit, far below the picture's floor): on a CPU too, where
    # torch's FFT in the render's threads costs half the writers' numpy drawing from the file.
    # A Vorbis file (lossy) is drawn from the file by the writers.
    picture = None if config.export.format == "ogg" else SPECTROGRAM_PICTURE
    # The memorization check is host work, done with the writing (on writer threads beside a GPU).
    pipeline = GenerationPipeline(model, config, device, picture=picture, defer_memorization=True)
    timings["load_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    found = scan_outputs(output_dir)
    timings["scan_s"] = time.perf_counter() - clock
    existing = found.verified
    identities = {seed: output_identity(config, seed, model.sha256) for seed in config.seeds}

    missing = []
    for seed in config.seeds:
        if identities[seed] in existing:
            outcome.items.append(_skipped_item(seed, identities[seed], existing[identities[seed]], config))
        else:
            missing.append(seed)

    show = sys.stderr.isatty() if show_progress is None else show_progress
    pool: WritePool[int] = WritePool(
        functools.partial(_write_output, pipeline=pipeline, output_dir=output_dir, extra_sidecar=extra_sidecar),
        write_workers(device, config.writers),
    )
    job = _Job(pipeline, identities, output_dir, outcome, found.broken, pool)
    try:
        with tqdm(
            total=len(identities), desc=output_dir.name, unit="file", disable=not show, dynamic_ncols=True
        ) as progress:
            job.progress = progress
            progress.update(len(identities) - len(missing))
            # On a terminal, log lines are written above the bar instead of breaking it.
            with logging_redirect_tqdm() if show else contextlib.nullcontext():
                try:
                    for batch in _plan_batches(missing, pipeline.batch_size):
                        job.render_batch(batch)
                    job.drain()
                except BaseException:
                    # Interrupted, or a failed write: writes started are finished, those not
                    # started are dropped, and what was written is recorded before the ending is.
                    # A signal meanwhile is held (the run's ending reads it).
                    with deferred(raise_at_end=False):
                        job.record(pool.abandon(), raise_errors=False)
                    raise
    finally:
        pool.close()
        timings.update({"render_s": job.render_s, **{f"{k}_s": v for k, v in job.stages_s.items()}})
        timings.update(pool.times.to_dict())
        order = {seed: i for i, seed in enumerate(config.seeds)}
        outcome.items.sort(key=lambda item: (item.status != "skipped", order.get(item.seed, len(order))))


class _Job:
    """One job's rendering and recording: batches in, outputs handed to the write pool, what the
    pool wrote recorded in the outcome (in the main thread, under `deferred()`)."""

    def __init__(
        self,
        pipeline: GenerationPipeline,
        identities: dict[int, str],
        output_dir: Path,
        outcome: JobOutcome,
        broken: dict[str, list[Verification]],
        pool: WritePool[int],
    ) -> None:
        self.pipeline = pipeline
        self.identities = identities
        self.output_dir = output_dir
        self.outcome = outcome
        self.broken = broken
        self.pool = pool
        self.progress: Any = None
        self.render_s = 0.0
        self.stages_s = dict.fromkeys(STAGES, 0.0)

    def render_batch(self, batch: list[int]) -> None:
        """Generate a batch of missing seeds and hand the items that pass to the writers."""
        started = time.perf_counter()
        results = _generate_isolated(self.pipeline, batch, self.identities, self.outcome)
        self.render_s += time.perf_counter() - started
        for result in results:
            for stage, seconds in result.timings_s.items():
                self.stages_s[stage] = self.stages_s.get(stage, 0.0) + seconds
            identity = self.identities[result.seed]
            reason = _failure_reason(result)
            if reason:
                self.outcome.items.append(ItemOutcome(result.seed, identity, "failed", reason))
                log.error("seed %d failed: %s", result.seed, reason)
                self.progress.update(1)
                continue
            with deferred():  # a broken pair is moved whole
                if not self._set_aside_broken(result.seed, identity):
                    self.progress.update(1)
                    continue
            self.pool.make_room(result.audio.nbytes)  # back-pressure: interruptible
            with deferred():  # handed over and recorded whole (see sda.write_pool)
                self.pool.submit(result.seed, result, result.audio.nbytes)
                self.record(self.pool.collect())
        del results

    def drain(self) -> None:
        """Wait for every write (interruptible) and record it."""
        while self.pool.pending:
            self.pool.wait_for_next()
            with deferred():
                self.record(self.pool.collect())

    def record(self, written: list[Written[int]], raise_errors: bool = True) -> None:
        """Record written outputs as done; then raise the first write error (the job's end),
        unless `raise_errors` is False (the job is ending already)."""
        first_error = None
        for item in written:
            self.progress.update(1)
            if item.error is not None:
                first_error = first_error or item.error
                continue
            saved, rejection = item.value
            quality = saved.record["quality"]
            self.outcome.items.append(
                ItemOutcome(
                    item.key,
                    saved.identity,
                    "done" if rejection is None else "rejected",
                    rejection or "",
                    saved.audio_path.name,
                    saved.sidecar_path.name,
                    quality["rating"],
                    quality["peak_dbfs"],
                    quality["loudness_lufs"],
                )
            )
            log.info(
                "wrote %s (%s: %s)%s",
                saved.audio_path.name,
                quality["rating"],
                quality["rating_reason"],
                "" if rejection is None else ", recorded as rejected (quality.reject_copies)",
            )
        if first_error is not None and raise_errors:
            raise first_error

    def _set_aside_broken(self, seed: int, identity: str) -> bool:
        """Move broken outputs that claim `identity` into broken/; False (the item recorded as
        failed) when one cannot be moved: never two audio files for one identity."""
        for check in self.broken.pop(identity, []):
            if not check.sidecar_path.exists():  # moved already: it claimed another identity too
                continue
            try:
                where = set_aside_broken(check, self.output_dir)
            except OutputError as error:
                self.outcome.items.append(ItemOutcome(seed, identity, "failed", str(error)))
                log.error("seed %d failed: %s", seed, error)
                return False
            log.warning(
                "moved broken output %s (%s) into %s before making identity %s again",
                check.sidecar_path.name,
                check.reason,
                where.relative_to(self.output_dir),
                identity,
            )
        return True


def _write_output(
    result: GenerationResult,
    pipeline: GenerationPipeline,
    output_dir: Path,
    extra_sidecar: dict[str, Any] | None,
) -> tuple[SavedOutput, str | None]:
    """A writer's work (on a writer thread, or on a CPU in the render's own): the output's
    memorization check, the output (sidecar first, see sda.outputs), then its picture for the
    report (one that cannot be drawn is left to the report). Returns the saved output and why it
    is rejected (quality.reject_copies), or None."""
    if result.memorization is None:
        result = pipeline.check_memorization(result)
    check = result.memorization
    rejection = check.verdict if check is not None and check.rejected else None
    saved = save_result(result, output_dir, extra_sidecar)
    try:
        one_shot = isinstance(result.config.chunking, OneshotChunking)
        write_picture(saved.audio_path, saved.identity, one_shot, result.spectrogram_db)
    except (OSError, ValueError, RuntimeError, SdaError) as error:
        log.warning("no spectrogram for %s yet (the report draws it): %s", saved.audio_path.name, error)
    return saved, rejection


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
