"""Hydra callback that records every job's outcome and ends a run or sweep with one summary line.

Jobs never raise (see sda.runner): each writes `outcome.json` into its folder. At the end of a
run or sweep, in the launching process whatever the launcher, this callback reads them all,
counts a job folder without an outcome as failed (its process died), writes `summary.json`,
logs `done / skipped / failed`, and sets the exit status `sda.run` returns.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sda.errors import SdaError
from sda.files import write_atomic
from sda.outputs import OUTCOME_FILE, SUMMARY_FILE
from sda.report import write_report

log = logging.getLogger("sda.run")


class RunStatus:
    """Exit status of the last run or sweep in this process (read by sda.run.main)."""

    exit_code = 0
    summary: dict[str, Any] = {}


def summarise(folder: Path, job_dirs: list[Path]) -> dict[str, Any]:
    counts = {"done": 0, "skipped": 0, "failed": 0}
    jobs = []
    for job_dir in job_dirs:
        path = job_dir / OUTCOME_FILE
        try:
            outcome = json.loads(path.read_text())
        except (OSError, ValueError):
            jobs.append({"output_dir": str(job_dir), "error": "no outcome recorded: the job's process ended early"})
            continue
        for status in counts:
            counts[status] += outcome["counts"][status]
        jobs.append({"output_dir": outcome["output_dir"], "error": outcome["error"], "counts": outcome["counts"]})
    failed_jobs = [job for job in jobs if job.get("error")]
    summary = {
        "folder": str(folder),
        "jobs": len(jobs),
        "failed_jobs": len(failed_jobs),
        **counts,
        "job_outcomes": jobs,
    }
    summary["ok"] = counts["failed"] == 0 and not failed_jobs
    return summary


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep: those Hydra made (each holds .hydra/), in job order."""
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml")]
    return sorted(dirs, key=lambda p: (len(p.name), p.name))


def _finish(folder: Path, job_dirs: list[Path]) -> None:
    summary = summarise(folder, job_dirs)
    try:
        write_atomic(folder / SUMMARY_FILE, json.dumps(summary, indent=2).encode(), replace=True)
    except SdaError as error:
        log.error("could not write %s: %s", folder / SUMMARY_FILE, error)
    try:
        write_report(folder, job_dirs)
    except (OSError, SdaError) as error:  # a report that cannot be written must not fail the sweep
        log.error("could not write the report (manifest.csv, index.html) in %s: %s", folder, error)
    line = (
        f"sda: {summary['done']} done / {summary['skipped']} skipped / {summary['failed']} failed"
        f" in {summary['jobs']} job{'s' if summary['jobs'] != 1 else ''}"
        + (f", {summary['failed_jobs']} job(s) failed" if summary["failed_jobs"] else "")
        + f" -> {folder}"
    )
    (log.info if summary["ok"] else log.error)("%s", line)
    for job in summary["job_outcomes"]:
        if job.get("error"):
            log.error("job %s: %s", job["output_dir"], job["error"])
    RunStatus.summary = summary
    RunStatus.exit_code = 0 if summary["ok"] else 1


class OutcomeSummary(Callback):
    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.runtime.output_dir)
        _finish(folder, [folder])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir)
        _finish(folder, _job_dirs(folder))
