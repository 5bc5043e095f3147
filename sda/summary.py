"""How a run or sweep ended: `summary.json`, the report, and the one line and exit status.

Jobs never raise (see sda.runner): each writes `outcome.json` into its folder, stamped with the
token of the `sda.run` process that launched it. When Hydra returns, the launching process
(whatever the launcher) counts only outcomes with its own token, so outcomes left by an earlier
run in the same folder never pass for this run's work, and a job of this run without an outcome
is reported as such. It writes `summary.json` and the report, and returns the exit status.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sda.errors import SdaError
from sda.files import write_json_atomic
from sda.outputs import OUTCOME_FILE, SUMMARY_FILE
from sda.report import write_report

log = logging.getLogger("sda.run")

COUNTED = ("done", "skipped", "failed", "rejected")


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


def summarize(folder: Path, multirun: bool, run_token: str, expected_jobs: int) -> dict[str, Any]:
    """Counts over the jobs this launch ran (outcomes with its token)."""
    counts = dict.fromkeys(COUNTED, 0)
    jobs: list[dict[str, Any]] = []
    for job_dir in job_folders(folder, multirun):
        outcome = _read_outcome(job_dir)
        if outcome is None or outcome.get("run_token") != run_token:
            continue
        for status in COUNTED:
            counts[status] += int(outcome.get("counts", {}).get(status, 0))
        jobs.append(
            {
                "output_dir": str(job_dir),
                "job_num": outcome.get("job_num"),
                "error": outcome.get("error"),
                "counts": outcome.get("counts"),
            }
        )
    missing = expected_jobs - len(jobs)
    if missing > 0:
        jobs.append(
            {
                "output_dir": str(folder),
                "job_num": None,
                "error": f"{missing} job(s) recorded no outcome: their process ended early",
                "counts": None,
            }
        )
    failed_jobs = [job for job in jobs if job.get("error")]
    return {
        "folder": str(folder),
        "jobs": expected_jobs,
        "failed_jobs": len(failed_jobs),
        **counts,
        "ok": counts["failed"] == 0 and not failed_jobs,
        "job_outcomes": jobs,
    }


def finish_run(folder: Path, multirun: bool, run_token: str, expected_jobs: int) -> int:
    """Write summary.json and the report, log the final line; return the exit status."""
    summary = summarize(folder, multirun, run_token, expected_jobs)
    try:
        write_json_atomic(folder / SUMMARY_FILE, summary, replace=True)
    except SdaError as error:
        log.error("could not write %s: %s", SUMMARY_FILE, error)
    try:
        write_report(folder, job_folders(folder, multirun))
    except (OSError, SdaError) as error:  # a report that cannot be written must not fail the run
        log.error("could not write the report (manifest.csv, index.html) in %s: %s", folder, error)
    jobs = summary["jobs"]
    line = (
        f"sda: {summary['done']} done / {summary['skipped']} skipped / {summary['failed']} failed"
        + (f" / {summary['rejected']} rejected" if summary["rejected"] else "")
        + f" in {jobs} job{'s' if jobs != 1 else ''}"
        + (f", {summary['failed_jobs']} job(s) failed" if summary["failed_jobs"] else "")
        + f" -> {folder}"
    )
    (log.info if summary["ok"] else log.error)("%s", line)
    for job in summary["job_outcomes"]:
        if job.get("error"):
            log.error("job %s: %s", job["output_dir"], job["error"])
    return 0 if summary["ok"] else 1
