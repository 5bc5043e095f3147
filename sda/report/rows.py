"""The report's rows, read from job folders, and `manifest.csv`.

One row per output found in a job folder (every sidecar, checked with `verify_output`, and any
`gen_*` audio file without a sidecar), one per output a resume set aside in its `broken/`
folder, plus one per item that `outcome.json` records as failed. Status: `done` (the audio
matches its sidecar), `rejected` (it does, but the job recorded it as a near copy of training
audio: sda.memorization; the reason says of what), `broken` (it does not, there is no sidecar, or
it was set aside; the reason says why) or `failed` (never written; the job's reason). Job-level
errors (a job that died or could not start) and interruptions are returned as problems. Each
output's nearest training window (distance in dB, file, start) comes from its sidecar's
memorization check.

In manifest.csv a text cell that a spreadsheet would take for a formula (starting with `=`, `+`,
`-`, `@`, a tab or a carriage return) gets a leading apostrophe; numbers are written as numbers.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sda.encode import EXTENSIONS
from sda.outputs import BROKEN_DIR, OUTCOME_FILE, OUTPUT_PREFIX, SIDECAR_GLOB, verify_output
from sda.parallel import parallel_map
from sda.seeds import right_seed

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "file",
    "job",
    "seed",
    "right_seed",
    "chunking",
    "stereo",
    "sample_rate",
    "bit_depth",
    "format",
    "channels",
    "frames",
    "duration_s",
    "length_s",
    "peak_dbfs",
    "rms_dbfs",
    "loudness_lufs",
    "true_peak_dbtp",
    "loudness_shortfall_lu",
    "rating",
    "rating_reason",
    "nearest_training_db",
    "nearest_training_file",
    "nearest_training_start_s",
    "status",
    "reason",
    "identity",
    "sidecar",
    "spectrogram",
    "waveform",
)
# Sort order of the page's rating column: best first, then what has no audio worth hearing.
RATING_RANK = {"green": 0, "yellow": 1, "red": 2}
STATUS_RANK = {"done": 0, "rejected": 1, "broken": 2, "failed": 3}
# Statuses of outputs whose audio matches their sidecar (they get a spectrogram and a player).
VERIFIED = ("done", "rejected")
# What a spreadsheet reads as the start of a formula (OWASP's list for CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_AUDIO_NAME = re.compile(
    "^" + re.escape(OUTPUT_PREFIX) + ".*(" + "|".join(re.escape(e) for e in EXTENSIONS.values()) + r")$"
)


@dataclass
class ReportRow:
    """One manifest row. Not in the manifest: `audio_exists` (for the page), and `audio_path` and
    `audio_sha256` of a done output (for its picture). `duration_s` is the setting, `length_s`
    the file's own length (a one-shot's is its sound's). `loudness_shortfall_lu`: by how many LU
    a loudness-normalized output stayed under its target (0 when reached; empty under peak
    normalization). A one-shot's picture is a `waveform`, any other output's a `spectrogram`."""

    job: str
    status: str
    file: str = ""
    sidecar: str = ""
    reason: str = ""
    identity: str = ""
    seed: int | None = None
    right_seed: int | None = None
    chunking: str | None = None
    stereo: str | None = None
    sample_rate: int | None = None
    bit_depth: int | None = None
    format: str | None = None
    channels: int | None = None
    frames: int | None = None
    duration_s: float | None = None
    length_s: float | None = None
    peak_dbfs: float | None = None
    rms_dbfs: float | None = None
    loudness_lufs: float | None = None
    true_peak_dbtp: float | None = None
    loudness_shortfall_lu: float | None = None
    rating: str | None = None
    rating_reason: str | None = None
    nearest_training_db: float | None = None
    nearest_training_file: str | None = None
    nearest_training_start_s: float | None = None
    memorization: str | None = None  # the check's status: checked, unavailable, no_window
    spectrogram: str = ""
    waveform: str = ""
    audio_exists: bool = False
    audio_path: Path | None = None
    audio_sha256: str = ""

    def csv_values(self) -> list[str]:
        return [manifest_cell(getattr(self, column)) for column in MANIFEST_COLUMNS]

    @property
    def rating_rank(self) -> int:
        if self.status != "done":
            return len(RATING_RANK) + STATUS_RANK[self.status]
        return RATING_RANK.get(self.rating or "", len(RATING_RANK))


def value_text(value: Any) -> str:
    """A row's value as text: empty for None or non-finite, floats to 10 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.10g}"
    return str(value)


def manifest_cell(value: Any) -> str:
    """`value_text`, and a text value a spreadsheet would run as a formula made inert."""
    text = value_text(value)
    if isinstance(value, str) and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def manifest_csv(rows: list[ReportRow]) -> str:
    """The manifest's text: a header and one line per row, each ended by "\n"."""
    # The writer quotes a field that holds a character of its line terminator, and only then:
    # with "\n" alone, a carriage return inside a field would be written bare and end the row
    # for every reader. So rows are written with "\r\n" and the "\r" of each ending dropped.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    lines = []
    for values in [MANIFEST_COLUMNS, *(row.csv_values() for row in rows)]:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        lines.append(buffer.getvalue().removesuffix("\r\n") + "\n")
    return "".join(lines)


def relative_to(path: Path, folder: Path) -> str:
    """`path` relative to `folder` in POSIX form (as links on the page need), else as it is."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.as_posix()


def collect_rows(folder: Path, job_dirs: list[Path]) -> tuple[list[ReportRow], list[str]]:
    """Rows for every output and failed item of `job_dirs`, and the job-level problems."""
    rows: list[ReportRow] = []
    problems: list[str] = []
    for job_dir in job_dirs:
        rows.extend(_job_rows(Path(folder), Path(job_dir), problems))
    return rows, problems


def _get(record: Any, *keys: str) -> Any:
    """record[k1][k2]... or None when any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def _as_int(value: Any) -> int | None:
    return (
        int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None
    )


def _as_float(value: Any) -> float | None:
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def _as_str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _fill_from_record(row: ReportRow, record: dict[str, Any]) -> None:
    row.identity = _as_str(record.get("identity")) or row.identity
    row.seed = _as_int(_get(record, "seeds", "left"))
    if row.seed is None:
        row.seed = _as_int(record.get("seed"))
    row.right_seed = _as_int(_get(record, "seeds", "right"))
    row.chunking = _as_str(_get(record, "config", "chunking", "mode"))
    row.stereo = _as_str(_get(record, "config", "stereo", "mode"))
    row.sample_rate = _as_int(_get(record, "file", "sample_rate"))
    row.bit_depth = _as_int(_get(record, "file", "bit_depth"))
    if row.bit_depth is None:
        row.bit_depth = _as_int(record.get("bit_depth"))
    row.format = _as_str(_get(record, "file", "format"))
    row.channels = _as_int(_get(record, "file", "channels"))
    row.frames = _as_int(_get(record, "file", "frames"))
    row.duration_s = _as_float(record.get("duration_s"))
    row.peak_dbfs = _as_float(_get(record, "file", "peak_dbfs"))  # what a reader decodes from the file
    if row.peak_dbfs is None:
        row.peak_dbfs = _as_float(_get(record, "quality", "peak_dbfs"))
    row.rms_dbfs = _as_float(_get(record, "quality", "rms_dbfs"))
    row.loudness_lufs = _as_float(_get(record, "quality", "loudness_lufs"))
    row.true_peak_dbtp = _as_float(_get(record, "level", "true_peak_dbtp"))
    row.loudness_shortfall_lu = _as_float(_get(record, "level", "shortfall_lu"))
    if row.frames is not None and row.sample_rate:
        row.length_s = row.frames / row.sample_rate
    row.rating = _as_str(_get(record, "quality", "rating"))
    row.rating_reason = _as_str(_get(record, "quality", "rating_reason"))
    row.memorization = _as_str(_get(record, "memorization", "status"))
    row.nearest_training_db = _as_float(_get(record, "memorization", "distance_db"))
    row.nearest_training_file = _as_str(_get(record, "memorization", "file"))
    row.nearest_training_start_s = _as_float(_get(record, "memorization", "start_s"))


def _job_config(outcome: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's generation settings for failed items: from one of its sidecars, else from the
    settings sda recorded in the job's outcome.json, else nothing."""
    for record in records:
        if isinstance(record.get("config"), dict):
            return record["config"]
    config = outcome.get("config")
    return config if isinstance(config, dict) else {}


def _failed_row(item: dict[str, Any], job: str, config: dict[str, Any]) -> ReportRow:
    row = ReportRow(job=job, status="failed", reason=str(item.get("reason") or "failed"))
    row.seed = _as_int(item.get("seed"))
    row.identity = _as_str(item.get("identity")) or ""
    row.chunking = _as_str(_get(config, "chunking", "mode"))
    row.stereo = _as_str(_get(config, "stereo", "mode"))
    row.sample_rate = _as_int(_get(config, "export", "sample_rate"))
    row.bit_depth = _as_int(_get(config, "export", "bit_depth"))
    row.format = _as_str(_get(config, "export", "format"))
    row.duration_s = _as_float(config.get("duration_s"))
    if row.stereo == "dual_seed" and row.seed is not None:
        try:
            row.right_seed = right_seed(row.seed)
        except ValueError:
            pass
    return row


def _rejected(outcome: Any) -> dict[str, str]:
    """identity -> reason of every item the job's outcome records as rejected."""
    items = _get(outcome, "items")
    return {
        str(item.get("identity")): str(item.get("reason") or "rejected")
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict) and item.get("status") == "rejected"
    }


def _output_rows(
    folder: Path,
    where: Path,
    job: str,
    records: list[dict[str, Any]],
    rejected: dict[str, str],
    set_aside: bool = False,
) -> list[ReportRow]:
    """Rows for the outputs in `where` (a job folder, or one of its broken/ folders when
    `set_aside`: every output there is broken, whatever its files say now)."""
    rows: list[ReportRow] = []
    named: set[str] = set()
    for check in parallel_map(verify_output, sorted(where.glob(SIDECAR_GLOB))):  # hashing every file: in parallel
        sidecar = check.sidecar_path
        ok = check.ok and not set_aside
        row = ReportRow(job=job, status="done" if ok else "broken", sidecar=relative_to(sidecar, folder))
        if set_aside:
            why = "" if check.ok else f": {check.reason}"
            row.reason = f"set aside in {BROKEN_DIR}/ when it was made again{why}"
        elif not check.ok:
            row.reason = check.reason
        if check.record is not None:
            if not set_aside:
                records.append(check.record)
            _fill_from_record(row, check.record)
            if not ok:  # the sidecar's measurements describe audio that is not on disk
                row.peak_dbfs = row.rms_dbfs = row.loudness_lufs = row.rating = row.rating_reason = None
                row.true_peak_dbtp = row.loudness_shortfall_lu = None
                row.nearest_training_db = row.nearest_training_file = row.nearest_training_start_s = None
                row.memorization = None
        if check.audio_path is not None:
            named.add(check.audio_path.name)
            row.file = relative_to(check.audio_path, folder)
            row.audio_exists = check.audio_path.is_file()
        if ok and check.audio_path is not None:
            row.audio_path = check.audio_path
            row.audio_sha256 = str(_get(check.record, "file", "sha256"))
            if row.identity in rejected:
                row.status, row.reason = "rejected", rejected[row.identity]
        rows.append(row)
    for audio in sorted(where.glob(f"{OUTPUT_PREFIX}*")):
        if audio.is_file() and _AUDIO_NAME.match(audio.name) and audio.name not in named:
            reason = f"set aside in {BROKEN_DIR}/, no sidecar" if set_aside else "no sidecar"
            rows.append(
                ReportRow(job=job, status="broken", file=relative_to(audio, folder), reason=reason, audio_exists=True)
            )
    return rows


def _job_rows(folder: Path, job_dir: Path, problems: list[str]) -> list[ReportRow]:
    job = relative_to(job_dir, folder) if job_dir != folder else "."
    try:
        outcome: Any = json.loads((job_dir / OUTCOME_FILE).read_text())
        outcome_error = None
    except FileNotFoundError:
        outcome, outcome_error = (
            None,
            f"job {job}: no {OUTCOME_FILE}: the job's process ended early or is still running",
        )
    except (OSError, ValueError) as error:
        outcome, outcome_error = None, f"job {job}: unreadable {OUTCOME_FILE}: {error}"
    rejected = _rejected(outcome)
    records: list[dict[str, Any]] = []
    rows = _output_rows(folder, job_dir, job, records, rejected)
    broken = job_dir / BROKEN_DIR
    for where in sorted({broken, *(p.parent for p in broken.rglob(f"{OUTPUT_PREFIX}*"))}):
        if where.is_dir():
            rows.extend(_output_rows(folder, where, job, records, rejected, set_aside=True))

    if outcome_error is not None:
        problems.append(outcome_error)
        return rows
    if _get(outcome, "error"):
        problems.append(f"job {job}: {outcome['error']}")
    if _get(outcome, "interrupted"):
        not_made = _as_int(_get(outcome, "not_made"))
        made = "" if not_made is None else f": {not_made} output(s) not made"
        problems.append(f"job {job}: interrupted by {outcome['interrupted']}{made}; resume= continues it")
    items = _get(outcome, "items")
    config = None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("status") == "failed":
            if config is None:
                config = _job_config(outcome, records)
            rows.append(_failed_row(item, job, config))
    return rows
