"""How a run or sweep ended: `summary.json`, the report, and the one line and exit status.

Jobs never raise (see sda.runner): each writes `outcome.json` into its folder, stamped with the
token of the `sda.run` process that launched it. When Hydra returns (or a signal stops it), the
launching process (whatever the launcher) counts only outcomes with its own token, so outcomes
left by an earlier run in the same folder never pass for this run's work. A job of this run
without an outcome (killed, or its outcome.json could not be written: disk full) is counted by
the outputs that verify and carry the token in their sidecars; what else it did is unknown, and
the summary says so. It writes `summary.json` and the report, each atomically, and returns the
exit status:

    0    every output asked for was made or already there, and summary.json was written
    1    an item or a job failed, a job's outcome is unknown, or summary.json could not be written
    130  interrupted by SIGINT (Ctrl-C); 143: by SIGTERM (128 + the signal's number)

The final line says the counts and every file that could not be written.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from sda.errors import OutputError, SdaError
from sda.files import write_json_atomic
from sda.interruption import SIGNALS, exit_status, signal_number
from sda.locking import check_unlocked
from sda.outputs import INDEX_FILE, MANIFEST_FILE, OUTCOME_FILE, SUMMARY_FILE
from sda.report import write_report
from sda.runner import ITEM_STATUSES, outputs_made_by

log = logging.getLogger("sda.run")

COUNTED = ITEM_STATUSES
SIGNAL_NAMES = tuple(signum.name for signum in SIGNALS)
REPORT_PENDING = "being written"  # summary.json's `report` until the report is written
# After an interruption, how long the launching process waits for jobs in other processes (joblib,
# submitit workers, which get the signal too) to record their outcomes: well inside the 30 s
# Slurm and the 90 s systemd leave before SIGKILL.
JOB_GRACE_S = 10.0


def job_folders(folder: Path, multirun: bool) -> list[Path]:
    """A run's folder, or the job folders of a sweep (those Hydra made: each holds .hydra/)."""
    if not multirun:
        return [folder]
    dirs = [p.parent.parent for p in folder.glob("*/.hydra/config.yaml")]
    return sorted(dirs, key=lambda p: (len(p.name), p.name))


def _read_outcome(job_dir: Path) -> dict[str, Any] | None:
    try:
        outcome = json.loads((job_dir / OUTCOME_FILE).read_text())
    except (OSError, ValueError):
        return None
    return outcome if isinstance(outcome, dict) else None


def _recorded_job(job_dir: Path, outcome: dict[str, Any]) -> dict[str, Any]:
    return {
        "output_dir": str(job_dir),
        "job_num": outcome.get("job_num"),
        "outcome": "recorded",
        "error": outcome.get("error"),
        "interrupted": outcome.get("interrupted") if outcome.get("interrupted") in SIGNAL_NAMES else None,
        "counts": outcome.get("counts"),
        "not_made": outcome.get("not_made"),
    }


def running_elsewhere(job_dir: Path) -> str | None:
    """Why `job_dir` is still being written by another process (its lock is held), or None."""
    try:
        check_unlocked(job_dir)
    except OutputError as error:
        return str(error)
    return None


def wait_for_jobs(folder: Path, multirun: bool, grace_s: float) -> None:
    """Wait up to `grace_s` until no other process holds the lock of a job folder of `folder`
    (a job holds its folder's lock until its outcome is recorded)."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(running_elsewhere(d) for d in job_folders(folder, multirun)):
        time.sleep(0.05)


def _running_job(job_dir: Path, why: str) -> dict[str, Any]:
    return {
        "output_dir": str(job_dir),
        "job_num": None,
        "outcome": "running",
        "error": None,
        "interrupted": None,
        "counts": None,
        "not_made": None,
        "note": f"still running when this process ended ({why}); its {OUTCOME_FILE} will say what it did",
    }


def _unrecorded_job(job_dir: Path, made: int, interrupted: str | None) -> dict[str, Any]:
    what = f"{made} output(s) it made verify, what became of its other items is unknown"
    entry = {
        "output_dir": str(job_dir),
        "job_num": None,
        "outcome": "missing",
        "error": None,
        "interrupted": interrupted,
        "counts": {"done": made, "skipped": None, "failed": None},
        "not_made": None,
    }
    if interrupted:  # a worker ended by the interruption before it could record anything
        entry["note"] = f"no {OUTCOME_FILE}: stopped by {interrupted} before recording one; {what}"
    else:
        entry["error"] = (
            f"no {OUTCOME_FILE} from this run (its process ended early, or the file could not be written); {what}"
        )
    return entry


def summarize(
    folder: Path,
    multirun: bool,
    run_token: str,
    expected_jobs: int,
    expected_items: int | None = None,
    interrupted: str | None = None,
    launcher_error: str | None = None,
) -> dict[str, Any]:
    """Counts over the jobs this launch ran (outcomes with its token, else the outputs it made).
    `interrupted`: the signal that stopped the launching process ("SIGINT", "SIGTERM");
    `launcher_error`: why Hydra's launcher stopped, if it raised."""
    counts = dict.fromkeys(COUNTED, 0)
    jobs: list[dict[str, Any]] = []
    unrecorded: list[tuple[Path, int]] = []
    for job_dir in job_folders(folder, multirun):
        outcome = _read_outcome(job_dir)
        if outcome is not None and outcome.get("run_token") == run_token:
            job = _recorded_job(job_dir, outcome)
            for status in COUNTED:
                counts[status] += int((job["counts"] or {}).get(status, 0))
            interrupted = interrupted or job["interrupted"]
            jobs.append(job)
        elif why := running_elsewhere(job_dir):
            jobs.append(_running_job(job_dir, why))
        else:
            made = len(outputs_made_by(job_dir, run_token))
            if made:  # else not this run's job, or one that made nothing: counted below
                unrecorded.append((job_dir, made))
    for job_dir, made in unrecorded:
        jobs.append(_unrecorded_job(job_dir, made, interrupted))
        counts["done"] += made
    missing = expected_jobs - len(jobs)
    if missing > 0:
        what = f"{missing} job(s) recorded no outcome and made no output that verifies"
        jobs.append(
            {
                "output_dir": str(folder),
                "job_num": None,
                "outcome": "missing",
                # Stopped by a signal, they were not started or stopped before recording anything.
                "error": None if interrupted else f"{what}: their process ended early",
                "interrupted": interrupted,
                "counts": None,
                "not_made": None,
                "jobs": missing,
                **({"note": f"{what} (interrupted before they started, or killed)"} if interrupted else {}),
            }
        )
    failed_jobs = [job for job in jobs if job.get("error")]
    running = sum(1 for job in jobs if job["outcome"] == "running")
    unaccounted = None if expected_items is None else max(expected_items - sum(counts.values()), 0)
    ok = counts["failed"] == 0 and not failed_jobs and not running and not interrupted and not launcher_error
    return {
        "folder": str(folder),
        "interrupted": interrupted,
        "launcher_error": launcher_error,
        "jobs": expected_jobs,
        "failed_jobs": len(failed_jobs),
        "running_jobs": running,
        "items": expected_items,
        **counts,
        "unaccounted": unaccounted,
        "ok": ok,
        "exit_status": exit_status(signal_number(interrupted)) if interrupted else (0 if ok else 1),
        "report": REPORT_PENDING,
        "job_outcomes": jobs,
    }


def _write_summary(folder: Path, summary: dict[str, Any]) -> str | None:
    """Write summary.json; the reason it could not be written, or None."""
    try:
        write_json_atomic(folder / SUMMARY_FILE, summary, replace=True)
    except (SdaError, ValueError) as error:
        return str(error)
    return None


def _remove_stale(folder: Path, names: tuple[str, ...]) -> None:
    """Remove files of an earlier ending that this one could not replace: left in place, they
    would describe the folder as it was."""
    for name in names:
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError as error:
            log.error("could not remove the earlier %s, which no longer describes %s: %s", name, folder, error)


def final_line(summary: dict[str, Any], summary_error: str | None, report_error: str | None) -> str:
    """`sda: N done / N skipped / N failed in N jobs[, what else] -> FOLDER`."""
    jobs, folder = summary["jobs"], summary["folder"]
    line = (
        f"sda: {summary['done']} done / {summary['skipped']} skipped / {summary['failed']} failed"
        + (f" / {summary['rejected']} rejected" if summary["rejected"] else "")
        + f" in {jobs} job{'s' if jobs != 1 else ''}"
    )
    notes = []
    if summary["interrupted"]:
        notes.append(f"interrupted by {summary['interrupted']}")
    if summary["unaccounted"]:
        gone = "not made" if summary["interrupted"] else "unaccounted for"
        notes.append(f"{summary['unaccounted']} of {summary['items']} {gone}")
    if summary["failed_jobs"]:
        notes.append(f"{summary['failed_jobs']} job(s) failed")
    if summary["running_jobs"]:
        notes.append(f"{summary['running_jobs']} job(s) still running")
    if summary["launcher_error"]:
        notes.append(f"the launcher stopped: {summary['launcher_error']}")
    if summary_error:
        notes.append(f"{SUMMARY_FILE} not written: {summary_error}")
    if report_error:
        notes.append(f"report not written: {report_error}")
    if summary["interrupted"]:
        notes.append(f"resume={folder} continues it")
    return line + "".join(f", {note}" for note in notes) + f" -> {folder}"


def finish_run(
    folder: Path,
    multirun: bool,
    run_token: str,
    expected_jobs: int,
    expected_items: int | None = None,
    interrupted: str | None = None,
    launcher_error: str | None = None,
    timings_s: dict[str, float] | None = None,
) -> int:
    """Write summary.json, the report, and summary.json again with the report's fate (a process
    killed while drawing the report leaves a summary that says it was being written); log the
    final line; return the exit status (see the module docstring). `timings_s`: where the run's
    time went before this (sda.run's), recorded with `summary_s` and `report_s` added."""
    started = time.perf_counter()
    if interrupted or launcher_error:  # jobs in other processes may still be recording their outcomes
        wait_for_jobs(folder, multirun, JOB_GRACE_S)
    summary = summarize(folder, multirun, run_token, expected_jobs, expected_items, interrupted, launcher_error)
    summary_error = _write_summary(folder, summary)
    summary_s = time.perf_counter() - started
    report_error = None
    try:
        write_report(folder, job_folders(folder, multirun))
    except (OSError, SdaError) as error:  # the outputs are fine: the report's loss is said, not a failure
        report_error = str(error)
        log.error("could not write the report (manifest.csv, index.html) in %s: %s", folder, error)
        _remove_stale(folder, (MANIFEST_FILE, INDEX_FILE))
    summary["report"] = f"not written: {report_error}" if report_error else "written"
    summary["timings_s"] = {
        **(timings_s or {}),
        "summary_s": summary_s,
        "report_s": time.perf_counter() - started - summary_s,
    }
    if summary_error is None:
        summary_error = _write_summary(folder, summary)
    if summary_error is not None:
        log.error("could not write %s: %s", SUMMARY_FILE, summary_error)
        _remove_stale(folder, (SUMMARY_FILE,))
    status = summary["exit_status"] if summary_error is None or summary["interrupted"] else 1
    line = final_line(summary, summary_error, report_error)
    (log.info if status == 0 else log.error)("%s", line)
    for job in summary["job_outcomes"]:
        if job.get("error"):
            log.error("job %s: %s", job["output_dir"], job["error"])
        elif job["outcome"] == "running":
            log.warning("job %s: %s", job["output_dir"], job["note"])
    return status
