"""`index.html`: the audition page, filled from the template files in `templates/`.

The page is self-contained: the stylesheet and the script are copied into it, the audio and the
pictures are relative links. A table sortable by any column (click a header; `#sort=rating`
or `#sort=-peak_dbfs` in the address sorts on load), green first when sorted by rating.

When the batch holds one-shots, a kit view comes first: one hit per row, played by a click on
the row, with its waveform, length, loudness and true peak (and any column of KIT_COLUMNS whose
figure some hit has), sortable like the main table (`#sort=` sorts both tables by that column
where they have it).

Templates are `string.Template` files. `fill` html-escapes every value it substitutes except a
`Markup`: what `fill` returned, text already escaped, or the package's own CSS and JS. Text from
a sidecar, an outcome or a file name can never become markup.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from sda.outputs import MANIFEST_FILE
from sda.report.rows import RATING_RANK, STATUS_RANK, VERIFIED, ReportRow, value_text
from sda.report.spectrogram import (
    SPECTROGRAM_F_MIN_HZ,
    SPECTROGRAM_FLOOR_DB,
    SPECTROGRAM_HEIGHT,
    SPECTROGRAM_MAX_S,
    SPECTROGRAM_TOP_DB,
    SPECTROGRAM_WIDTH,
)
from sda.report.waveform import WAVEFORM_HEIGHT, WAVEFORM_SPAN_S, WAVEFORM_WIDTH

TEMPLATES = resources.files("sda.report") / "templates"


class Markup(str):
    """HTML that is inserted as it is."""


@functools.cache
def template_text(name: str) -> str:
    """A file of `templates/`; a one-line fragment loses its final newline."""
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    return text[:-1] if text.count("\n") == 1 and text.endswith("\n") else text


def fill(template: str, **values: Any) -> Markup:
    """The file `template` with every value substituted, html-escaped unless it is Markup."""
    escaped = {key: value if isinstance(value, Markup) else html.escape(str(value)) for key, value in values.items()}
    return Markup(Template(template_text(template)).substitute(escaped))


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class KitColumn:
    """A sortable figure of the kit view: `value` reads it from a row (None: not known)."""

    key: str
    label: str
    value: Callable[[ReportRow], float | None]
    digits: int


# The kit view's figures, in order. A column is shown when at least one hit has its figure.
KIT_COLUMNS: tuple[KitColumn, ...] = (
    KitColumn("length_ms", "length (ms)", lambda r: None if r.length_s is None else 1000 * r.length_s, 0),
    KitColumn("loudness_lufs", "loudness (LUFS)", lambda r: r.loudness_lufs, 1),
    KitColumn("true_peak_dbtp", "true peak (dBTP)", lambda r: r.true_peak_dbtp, 2),
    # The memorization check's distance to the nearest training window, where it was measured.
    KitColumn("nearest_training_db", "nearest training window (dB)", lambda r: r.nearest_training_db, 2),
)


def _loudness_text(row: ReportRow) -> str:
    text = _number(row.loudness_lufs, 1)
    shortfall = row.loudness_shortfall_lu
    if text and shortfall is not None and shortfall >= 0.05:
        text += f" ({shortfall:.1f} LU short)"
    return text


def _picture(row: ReportRow) -> Markup:
    name = Path(row.file).name
    if row.waveform:
        return fill("waveform.html", src=quote(row.waveform), width=WAVEFORM_WIDTH, height=WAVEFORM_HEIGHT, name=name)
    if row.spectrogram:
        return fill(
            "spectrogram.html",
            src=quote(row.spectrogram),
            width=SPECTROGRAM_WIDTH,
            height=SPECTROGRAM_HEIGHT,
            name=name,
        )
    return Markup("")


def is_hit(row: ReportRow) -> bool:
    """A row of the kit view: a one-shot whose audio is done."""
    return row.status == "done" and row.chunking == "oneshot" and bool(row.file)


def kit_html(rows: list[ReportRow]) -> Markup:
    """The kit view of the one-shots among `rows` (nothing when there are none)."""
    hits = [row for row in rows if is_hit(row)]
    if not hits:
        return Markup("")
    columns = [c for c in KIT_COLUMNS if any(c.value(row) is not None for row in hits)]
    headers = Markup("".join(fill("kit_header.html", key=c.key, label=c.label) for c in columns))
    lines = []
    for row in hits:
        cells = Markup(
            "".join(
                fill("kit_cell.html", key=c.key, value=value_text(c.value(row)), text=_number(c.value(row), c.digits))
                for c in columns
            )
        )
        lines.append(
            fill(
                "kit_row.html",
                src=quote(row.file),
                file=row.file,
                name=Path(row.file).name,
                waveform=_picture(row),
                cells=cells,
                rating_rank=row.rating_rank,
                rating_class=row.rating or "",
                rating_label=row.rating or "unrated",
            )
        )
    return fill(
        "kit.html", count=len(hits), span_s=f"{WAVEFORM_SPAN_S:g}", headers=headers, rows=Markup("\n".join(lines))
    )


def row_html(row: ReportRow) -> Markup:
    href = quote(row.file) if row.file else ""
    if row.status in VERIFIED or row.audio_exists:  # a broken file may still play in part
        player = fill("player.html", src=href)
    else:
        player = fill("no_player.html", status=row.status)
    if row.status == "done":
        label, cls, why = row.rating or "unrated", row.rating or "", row.rating_reason or ""
    else:
        label, cls, why = row.status, row.status, row.reason
    name = (
        Path(row.file).name if row.file else Path(row.sidecar).name if row.sidecar else f"seed {value_text(row.seed)}"
    )
    link = fill("audio_link.html", href=href, name=name) if row.audio_exists else Markup(html.escape(name))
    if row.sidecar:
        link = Markup(f"{link} {fill('sidecar_link.html', href=quote(row.sidecar))}")
    nearest_text, nearest_where = _nearest_texts(row)
    seed_text = value_text(row.seed) + (f" / R {row.right_seed}" if row.right_seed is not None else "")
    format_text = (row.format or "") + (f" {row.bit_depth}-bit" if row.bit_depth and row.format != "ogg" else "")
    return fill(
        "row.html",
        status=row.status,
        file=row.file,
        identity=row.identity,
        rating_rank=row.rating_rank,
        rating_class=cls,
        rating_label=label,
        rating_reason=why,
        file_key=row.file or row.sidecar,
        link=link,
        player=player,
        picture=_picture(row),
        job=value_text(row.job),
        seed=value_text(row.seed),
        seed_text=seed_text,
        chunking=value_text(row.chunking),
        stereo=value_text(row.stereo),
        sample_rate=value_text(row.sample_rate),
        format=value_text(row.format),
        format_text=format_text,
        length_s=value_text(row.length_s if row.length_s is not None else row.duration_s),
        length_text=_number(row.length_s if row.length_s is not None else row.duration_s, 2),
        peak_dbfs=value_text(row.peak_dbfs),
        peak_text=_number(row.peak_dbfs, 2),
        rms_dbfs=value_text(row.rms_dbfs),
        rms_text=_number(row.rms_dbfs, 2),
        loudness_lufs=value_text(row.loudness_lufs),
        loudness_text=_loudness_text(row),
        true_peak_dbtp=value_text(row.true_peak_dbtp),
        true_peak_text=_number(row.true_peak_dbtp, 2),
        nearest_training_db=value_text(row.nearest_training_db),
        nearest_text=nearest_text,
        nearest_where=nearest_where,
    )


def _nearest_texts(row: ReportRow) -> tuple[str, str]:
    """(distance, where) for the nearest-training-window cell: "3.21" and "rain.wav at 1.50 s",
    or what the check said when it measured nothing."""
    if row.nearest_training_db is not None:
        start = "" if row.nearest_training_start_s is None else f" at {row.nearest_training_start_s:.2f} s"
        return f"{row.nearest_training_db:.2f}", f"{row.nearest_training_file or '?'}{start}"
    if row.status in VERIFIED and row.memorization:
        return row.memorization.replace("_", " "), ""
    return "", ""


def page_html(folder: Path, rows: list[ReportRow], problems: list[str]) -> str:
    """The whole page for the rows of `folder` and its job-level problems."""
    counts = {status: sum(1 for r in rows if r.status == status) for status in STATUS_RANK}
    ratings = {rating: sum(1 for r in rows if r.status == "done" and r.rating == rating) for rating in RATING_RANK}
    rejected = f"{counts['rejected']} rejected as near copies, " if counts["rejected"] else ""
    summary = (
        f"{counts['done']} done ({ratings['green']} green, {ratings['yellow']} yellow, {ratings['red']} red), "
        f"{rejected}{counts['broken']} broken, {counts['failed']} failed; {MANIFEST_FILE} lists them all."
    )
    problem_list = Markup("")
    if problems:
        problem_list = fill("problems.html", items=Markup("".join(fill("problem.html", problem=p) for p in problems)))
    return fill(
        "index.html",
        title=f"sda batch {Path(folder).name}",
        style=Markup(template_text("style.css")),
        script=Markup(template_text("script.js")),
        summary=summary,
        manifest=MANIFEST_FILE,
        max_s=f"{SPECTROGRAM_MAX_S:g}",
        f_min_hz=f"{SPECTROGRAM_F_MIN_HZ:g}",
        floor_db=f"{SPECTROGRAM_FLOOR_DB:g}",
        top_db=f"{SPECTROGRAM_TOP_DB:g}",
        problems=problem_list,
        kit=kit_html(rows),
        rows=Markup("\n".join(row_html(row) for row in rows)),
    )
