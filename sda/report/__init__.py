"""The morning report of a run or sweep folder: `manifest.csv`, `index.html` and spectrograms.

    rows.py         the rows, read from the job folders' sidecars and outcomes; manifest.csv
    spectrogram.py  one PNG per done output (levels, colour map, PNG bytes)
    page.py         index.html from the files in templates/ (HTML, CSS, JS)

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
from sda.report.rows import ReportRow, collect_rows, manifest_csv, relative_to
from sda.report.spectrogram import spectrogram_path, write_spectrogram

log = logging.getLogger(__name__)

__all__ = ["write_report"]


def add_spectrograms(folder: Path, rows: list[ReportRow]) -> None:
    """Draw the spectrogram of every done output that has none yet (in parallel: a run draws
    its own as it writes, so these are the outputs of older runs), and link each row to its own."""
    pictures = {
        id(row): spectrogram_path(row.audio_path.parent, row.audio_path.stem, row.identity or row.audio_sha256)
        for row in rows
        if row.status == "done" and row.audio_path is not None
    }
    missing = [(row.audio_path, png) for row in rows if (png := pictures.get(id(row))) and not png.is_file()]
    parallel_map(_draw, missing)
    for row in rows:
        if (png := pictures.get(id(row))) and png.is_file():
            row.spectrogram = relative_to(png, folder)


def _draw(paths: tuple[Path, Path]) -> None:
    audio_path, png = paths
    try:
        write_spectrogram(audio_path, png)
    except (RuntimeError, ValueError, OSError, sf.LibsndfileError) as error:
        log.warning("no spectrogram for %s: %s", audio_path, error)


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
