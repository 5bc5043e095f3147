"""The morning report of a run or sweep folder: `manifest.csv`, `index.html` and spectrograms.

    rows.py         the rows, read from the job folders' sidecars and outcomes; manifest.csv
    spectrogram.py  one PNG per done output (levels, colour map, PNG bytes)
    waveform.py     a one-shot's picture instead: its short waveform
    page.py         index.html from the files in templates/ (HTML, CSS, JS), with a kit view of
                    the one-shots

Every file is written atomically (sda.files); manifest and page replace earlier ones, a
spectrogram already drawn is kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

import soundfile as sf

from sda.files import write_atomic
from sda.outputs import INDEX_FILE, MANIFEST_FILE
from sda.parallel import parallel_map
from sda.report.page import page_html
from sda.report.pictures import picture_path, write_picture
from sda.report.rows import VERIFIED, ReportRow, collect_rows, manifest_csv, relative_to

log = logging.getLogger(__name__)

__all__ = ["write_report"]


def add_spectrograms(folder: Path, rows: list[ReportRow]) -> None:
    """Draw the picture of every verified output that has none yet (in parallel: a run draws its
    own as it writes, so these are mostly the outputs of older runs), and link each row to its
    own: a waveform for a one-shot (a hit is seen by its shape), a spectrogram for anything else."""
    shown = [row for row in rows if row.status in VERIFIED and row.audio_path is not None]
    parallel_map(_draw_missing, shown)
    for row in shown:
        png = picture_path(row.audio_path, row.identity or row.audio_sha256, row.chunking == "oneshot")
        if png.is_file():
            if row.chunking == "oneshot":
                row.waveform = relative_to(png, folder)
            else:
                row.spectrogram = relative_to(png, folder)


def _draw_missing(row: ReportRow) -> None:
    one_shot, key = row.chunking == "oneshot", row.identity or row.audio_sha256
    if picture_path(row.audio_path, key, one_shot).is_file():
        return
    try:
        write_picture(row.audio_path, key, one_shot)
    except (RuntimeError, ValueError, OSError, sf.LibsndfileError) as error:
        log.warning("no picture for %s: %s", row.audio_path, error)


def write_report(folder: Path, job_dirs: list[Path]) -> tuple[Path, Path]:
    """Write `manifest.csv` and `index.html` into `folder` (replacing earlier ones) and any
    missing spectrograms into the job folders. Returns (manifest path, index path).
    Raises OutputError (one line) when the report cannot be written."""
    folder = Path(folder)
    rows, problems = collect_rows(folder, [Path(d) for d in job_dirs])
    add_spectrograms(folder, rows)
    manifest_path, index_path = folder / MANIFEST_FILE, folder / INDEX_FILE
    write_atomic(manifest_path, manifest_csv(rows).encode(), replace=True)
    write_atomic(index_path, page_html(folder, rows, problems).encode(), replace=True)
    log.info("report: %s (%d rows) and %s", index_path, len(rows), manifest_path.name)
    return manifest_path, index_path
