"""Manifest and audition page for a run or sweep folder: `manifest.csv`, `index.html`, spectrograms.

One manifest row per output found in a job folder (every `gen_*.json` sidecar, checked with
`verify_output`, and any `gen_*` audio file without a sidecar) plus one per item that
`outcome.json` records as failed. Status: `done` (the audio matches its sidecar), `broken` (it
does not, or there is no sidecar; the reason says why) or `failed` (never written; the job's
reason). Job-level errors (a job that died or could not start) are listed on the page.

`index.html` is self-contained: relative links to the audio and to one spectrogram PNG per done
output, a table sortable by any column (click a header; `#sort=rating` or `#sort=-peak_dbfs` in
the address sorts on load), green first when sorted by rating.

Spectrograms: log-magnitude STFT of the first channel over at most SPECTROGRAM_MAX_S seconds,
log-frequency rows from SPECTROGRAM_F_MIN_HZ to Nyquist, levels from SPECTROGRAM_FLOOR_DB to
SPECTROGRAM_TOP_DB relative to a full-scale sine. They are written into `spectrograms/` in each
job folder, named by the output's identity, and never recomputed once there: the report is
rewritten at the end of every run and resume, and its cost must not grow with the sweep.
Every file is written atomically (a temporary file in the same folder, then `os.replace`).
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import soundfile as sf
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sda.encode import EXTENSIONS
from sda.files import write_atomic
from sda.outputs import INDEX_FILE, MANIFEST_FILE, OUTCOME_FILE, SPECTROGRAM_DIR, verify_output
from sda.seeds import right_seed

log = logging.getLogger(__name__)

SPECTROGRAM_WIDTH = 400
SPECTROGRAM_HEIGHT = 120
SPECTROGRAM_MAX_S = 30.0
SPECTROGRAM_F_MIN_HZ = 30.0
SPECTROGRAM_FLOOR_DB = -110.0
SPECTROGRAM_TOP_DB = -10.0

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
    "peak_dbfs",
    "rms_dbfs",
    "loudness_lufs",
    "rating",
    "rating_reason",
    "status",
    "reason",
    "identity",
    "sidecar",
    "spectrogram",
)
# Sort order of the page's rating column: best first, then what has no audio worth hearing.
RATING_RANK = {"green": 0, "yellow": 1, "red": 2}
STATUS_RANK = {"done": 0, "broken": 1, "failed": 2}
_AUDIO_NAME = re.compile(r"^gen_.*(" + "|".join(re.escape(e) for e in EXTENSIONS.values()) + r")$")
# Colour map anchors (position, RGB): black -> purple -> red -> orange -> pale yellow. The sum
# R+G+B rises at every anchor, so brightness orders levels.
_COLOURS = np.array(
    [(0.0, 0, 0, 0), (0.25, 40, 10, 90), (0.5, 180, 40, 90), (0.75, 250, 140, 30), (1.0, 255, 255, 200)],
    dtype=np.float64,
)


@dataclass
class ReportRow:
    """One manifest row (`audio_exists` is for the page only)."""

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
    peak_dbfs: float | None = None
    rms_dbfs: float | None = None
    loudness_lufs: float | None = None
    rating: str | None = None
    rating_reason: str | None = None
    spectrogram: str = ""
    audio_exists: bool = False

    def csv_values(self) -> list[str]:
        return [_csv_value(getattr(self, column)) for column in MANIFEST_COLUMNS]

    @property
    def rating_rank(self) -> int:
        if self.status != "done":
            return len(RATING_RANK) + STATUS_RANK[self.status]
        return RATING_RANK.get(self.rating or "", len(RATING_RANK))


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.10g}"
    return str(value)


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


# ------------------------------------------------------------------------------------------------
# Files


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG file of an `[height, width, 3]` uint8 image (8-bit RGB, filter 0 on every row)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"image of shape {rgb.shape} and dtype {rgb.dtype}: expected [height, width, 3] uint8")
    height, width, _ = rgb.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------------------
# Spectrograms


def spectrogram_n_fft(sample_rate: int) -> int:
    """About 43 ms: 2048 at 44.1 and 48 kHz, 4096 at 96 kHz."""
    return 1 << max(8, round(math.log2(sample_rate * 0.0427)))


def spectrogram_row_edges_hz(sample_rate: int, height: int = SPECTROGRAM_HEIGHT) -> np.ndarray:
    """`height + 1` band edges, log-spaced from SPECTROGRAM_F_MIN_HZ to Nyquist, lowest first."""
    return np.geomspace(SPECTROGRAM_F_MIN_HZ, sample_rate / 2, height + 1)


def spectrogram_row_frequencies(sample_rate: int, height: int = SPECTROGRAM_HEIGHT) -> np.ndarray:
    """Centre frequency in Hz of each image row, top row (highest band) first."""
    edges = spectrogram_row_edges_hz(sample_rate, height)
    return np.sqrt(edges[:-1] * edges[1:])[::-1]


def colour_map(levels: np.ndarray) -> np.ndarray:
    """Levels in [0, 1] -> uint8 RGB (`[..., 3]`), brighter for higher levels."""
    levels = np.clip(levels, 0.0, 1.0)
    channels = [np.interp(levels, _COLOURS[:, 0], _COLOURS[:, i]) for i in (1, 2, 3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def spectrogram_levels_db(
    signal: np.ndarray, sample_rate: int, width: int = SPECTROGRAM_WIDTH, height: int = SPECTROGRAM_HEIGHT
) -> np.ndarray:
    """`[height, width]` levels in dB relative to a full-scale sine, top row highest frequency.

    Frames of `spectrogram_n_fft` samples (Hann) at half-frame hops, or closer when there are
    fewer than `width` of them; each column is the mean power of its frames, each row the
    strongest bin of its band (a band narrower than a bin takes the bin it lies in)."""
    signal = np.asarray(signal, dtype=np.float32).reshape(-1)
    n_fft = spectrogram_n_fft(sample_rate)
    if signal.size < n_fft:
        signal = np.pad(signal, (0, n_fft - signal.size))
    span = signal.size - n_fft
    n_frames = max(width, span // (n_fft // 2) + 1)
    starts = np.linspace(0, span, n_frames).round().astype(np.int64)
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    frames = signal[starts[:, None] + np.arange(n_fft)] * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [n_frames, bins]
    bounds = np.floor(np.arange(width) * n_frames / width).astype(np.int64)
    columns = np.add.reduceat(power, bounds, axis=0) / np.diff(np.append(bounds, n_frames))[:, None]
    bin_hz = sample_rate / n_fft
    edges = spectrogram_row_edges_hz(sample_rate, height)
    low = np.minimum(np.floor(edges[:-1] / bin_hz + 0.5).astype(np.int64), power.shape[1] - 1)
    high = np.maximum(np.floor(edges[1:] / bin_hz + 0.5).astype(np.int64), low + 1)
    bands = np.stack([columns[:, lo:hi].max(axis=1) for lo, hi in zip(low, high, strict=True)])  # [height, width]
    full_scale = (window.sum() / 2) ** 2
    return 10 * np.log10(bands[::-1] / full_scale + 1e-20)


def spectrogram_image(
    signal: np.ndarray, sample_rate: int, width: int = SPECTROGRAM_WIDTH, height: int = SPECTROGRAM_HEIGHT
) -> np.ndarray:
    """`[height, width, 3]` uint8 picture of `spectrogram_levels_db`."""
    levels = spectrogram_levels_db(signal, sample_rate, width, height)
    return colour_map((levels - SPECTROGRAM_FLOOR_DB) / (SPECTROGRAM_TOP_DB - SPECTROGRAM_FLOOR_DB))


def write_spectrogram(audio_path: Path, png_path: Path) -> None:
    """Draw the first channel of the first SPECTROGRAM_MAX_S seconds of `audio_path`."""
    info = sf.info(str(audio_path))
    frames = min(info.frames, round(SPECTROGRAM_MAX_S * info.samplerate))
    audio, sample_rate = sf.read(str(audio_path), frames=frames, dtype="float32", always_2d=True)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(png_path, png_bytes(spectrogram_image(audio[:, 0], sample_rate)), replace=True)


def spectrogram_path(job_dir: Path, stem: str, identity: str) -> Path:
    key = re.sub(r"[^0-9A-Za-z]", "", identity)[:32] or "noidentity"
    return job_dir / SPECTROGRAM_DIR / f"{stem}_{key}.png"


# ------------------------------------------------------------------------------------------------
# Collecting rows


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.as_posix()


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
    row.rating = _as_str(_get(record, "quality", "rating"))
    row.rating_reason = _as_str(_get(record, "quality", "rating_reason"))


def _job_config(job_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's generation settings for failed items: from one of its sidecars, else from the
    `.hydra/config.yaml` Hydra wrote into the job folder, else nothing."""
    for record in records:
        if isinstance(record.get("config"), dict):
            return record["config"]
    path = job_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
        log.warning("could not read %s: %s", path, error)
        return {}
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


def _job_rows(folder: Path, job_dir: Path, problems: list[str]) -> list[ReportRow]:
    job = _relative(job_dir, folder) if job_dir != folder else "."
    rows: list[ReportRow] = []
    records: list[dict[str, Any]] = []
    named: set[str] = set()
    for sidecar in sorted(job_dir.glob("gen_*.json")):
        check = verify_output(sidecar)
        row = ReportRow(job=job, status="done" if check.ok else "broken", sidecar=_relative(sidecar, folder))
        if not check.ok:
            row.reason = check.reason
        if check.record is not None:
            records.append(check.record)
            _fill_from_record(row, check.record)
            if not check.ok:  # the sidecar's measurements describe audio that is not on disk
                row.peak_dbfs = row.rms_dbfs = row.loudness_lufs = row.rating = row.rating_reason = None
        if check.audio_path is not None:
            named.add(check.audio_path.name)
            row.file = _relative(check.audio_path, folder)
            row.audio_exists = check.audio_path.is_file()
        if check.ok and check.audio_path is not None:
            png = spectrogram_path(
                job_dir, check.audio_path.stem, row.identity or str(_get(check.record, "file", "sha256"))
            )
            if not png.is_file():
                try:
                    write_spectrogram(check.audio_path, png)
                except (RuntimeError, ValueError, OSError, sf.LibsndfileError) as error:
                    log.warning("no spectrogram for %s: %s", check.audio_path, error)
            if png.is_file():
                row.spectrogram = _relative(png, folder)
        rows.append(row)
    for audio in sorted(job_dir.glob("gen_*")):
        if audio.is_file() and _AUDIO_NAME.match(audio.name) and audio.name not in named:
            rows.append(
                ReportRow(
                    job=job, status="broken", file=_relative(audio, folder), reason="no sidecar", audio_exists=True
                )
            )

    outcome_path = job_dir / OUTCOME_FILE
    try:
        outcome = json.loads(outcome_path.read_text())
    except FileNotFoundError:
        problems.append(f"job {job}: no {OUTCOME_FILE}: the job's process ended early or is still running")
        return rows
    except (OSError, ValueError) as error:
        problems.append(f"job {job}: unreadable {OUTCOME_FILE}: {error}")
        return rows
    if _get(outcome, "error"):
        problems.append(f"job {job}: {outcome['error']}")
    items = _get(outcome, "items")
    config = None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("status") == "failed":
            if config is None:
                config = _job_config(job_dir, records)
            rows.append(_failed_row(item, job, config))
    return rows


def collect_rows(folder: Path, job_dirs: list[Path]) -> tuple[list[ReportRow], list[str]]:
    """Rows for every output and failed item of `job_dirs`, and the job-level problems."""
    rows: list[ReportRow] = []
    problems: list[str] = []
    for job_dir in job_dirs:
        rows.extend(_job_rows(Path(folder), Path(job_dir), problems))
    return rows, problems


# ------------------------------------------------------------------------------------------------
# Writing


def manifest_csv(rows: list[ReportRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in rows:
        writer.writerow(row.csv_values())
    return buffer.getvalue()


# (key, header, type) of the page's sortable columns; "num" sorts numerically, empty cells last.
_PAGE_COLUMNS = (
    ("rating", "rating", "num"),
    ("file", "file", "text"),
    ("", "spectrogram", ""),
    ("job", "job", "text"),
    ("seed", "seed", "num"),
    ("chunking", "chunking", "text"),
    ("stereo", "stereo", "text"),
    ("sample_rate", "rate (Hz)", "num"),
    ("format", "format", "text"),
    ("duration_s", "duration (s)", "num"),
    ("peak_dbfs", "peak (dBFS)", "num"),
    ("rms_dbfs", "RMS (dBFS)", "num"),
    ("loudness_lufs", "loudness (LUFS)", "num"),
)

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; vertical-align: middle; text-align: left; }
th[data-key] { cursor: pointer; user-select: none; background: #eee; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.rating { font-weight: 600; padding: 1px 6px; border-radius: 3px; }
.green { background: #c8efc8; } .yellow { background: #f6eaa0; } .red { background: #f4b8b8; }
.broken, .failed { background: #ccc; }
.reason { color: #555; font-size: 12px; }
td[data-key="rating"] { min-width: 9em; max-width: 16em; }
.help { color: #555; font-size: 12px; }
img.spectrogram { display: block; image-rendering: pixelated; }
audio { width: 260px; }
.problems li { color: #a00; }
"""

_SCRIPT = """
(function () {
  var table = document.getElementById("outputs");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var current = null;
  function value(row, key, type) {
    var cell = row.querySelector('td[data-key="' + key + '"]');
    var text = cell ? cell.getAttribute("data-v") : "";
    if (text === null || text === "") return null;
    return type === "num" ? parseFloat(text) : text;
  }
  function sortBy(key, descending) {
    var header = table.querySelector('th[data-key="' + key + '"]');
    if (!header) return;
    var type = header.getAttribute("data-type");
    var keyed = rows.map(function (row, i) { return [value(row, key, type), i, row]; });
    keyed.sort(function (a, b) {
      if (a[0] === null || b[0] === null) {
        if (a[0] === b[0]) return a[1] - b[1];
        return a[0] === null ? 1 : -1;  // empty cells last, either direction
      }
      var order = type === "num" ? a[0] - b[0] : String(a[0]).localeCompare(String(b[0]));
      if (descending) order = -order;
      return order || a[1] - b[1];
    });
    keyed.forEach(function (entry, position) {
      entry[2].setAttribute("data-position", String(position));
      body.appendChild(entry[2]);
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
    current = (descending ? "-" : "") + key;
    document.body.setAttribute("data-sorted-by", current);
  }
  Array.prototype.forEach.call(table.querySelectorAll("th[data-key]"), function (header) {
    header.addEventListener("click", function () {
      var key = header.getAttribute("data-key");
      sortBy(key, current === key);
    });
  });
  var match = /(?:^#|&)sort=(-?)([a-z_]+)/.exec(window.location.hash);
  if (match) sortBy(match[2], match[1] === "-");
  var counts = {done: 0, broken: 0, failed: 0};
  rows.forEach(function (row) { counts[row.getAttribute("data-status")] += 1; });
  table.setAttribute("data-js-rows", String(rows.length));
  document.getElementById("js-count").textContent =
    rows.length + " rows: " + counts.done + " done, " + counts.broken + " broken, " + counts.failed + " failed";
})();
"""


def _cell(key: str, value: Any, shown: str | None = None, numeric: bool = False) -> str:
    data = _csv_value(value)
    text = html.escape(shown if shown is not None else data)
    cls = ' class="num"' if numeric else ""
    return f'<td data-key="{key}" data-v="{html.escape(data, quote=True)}"{cls}>{text}</td>'


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _row_html(row: ReportRow) -> str:
    href = quote(row.file) if row.file else ""
    if row.status == "done":
        player = f'<audio controls preload="none" src="{html.escape(href, quote=True)}"></audio>'
    elif row.audio_exists:  # a broken file may still play in part
        player = f'<audio controls preload="none" src="{html.escape(href, quote=True)}"></audio>'
    else:
        player = f'<span class="reason">no audio ({html.escape(row.status)})</span>'
    if row.spectrogram:
        image = (
            f'<img class="spectrogram" src="{html.escape(quote(row.spectrogram), quote=True)}" width="{SPECTROGRAM_WIDTH}"'
            f' height="{SPECTROGRAM_HEIGHT}" loading="lazy" alt="spectrogram of {html.escape(Path(row.file).name, quote=True)}">'
        )
    else:
        image = ""
    if row.status == "done":
        label, cls, why = row.rating or "unrated", row.rating or "", row.rating_reason or ""
    else:
        label, cls, why = row.status, row.status, row.reason
    rating = (
        f'<td data-key="rating" data-v="{row.rating_rank}"><span class="rating {html.escape(cls, quote=True)}">'
        f'{html.escape(label)}</span><div class="reason">{html.escape(why)}</div></td>'
    )
    name = (
        Path(row.file).name if row.file else Path(row.sidecar).name if row.sidecar else f"seed {_csv_value(row.seed)}"
    )
    link = (
        f'<a href="{html.escape(href, quote=True)}">{html.escape(name)}</a>' if row.audio_exists else html.escape(name)
    )
    if row.sidecar:
        link += f' <a class="reason" href="{html.escape(quote(row.sidecar), quote=True)}">sidecar</a>'
    seed_text = _csv_value(row.seed) + (f" / R {row.right_seed}" if row.right_seed is not None else "")
    format_text = (row.format or "") + (f" {row.bit_depth}-bit" if row.bit_depth and row.format != "ogg" else "")
    cells = [
        rating,
        f'<td data-key="file" data-v="{html.escape(row.file or row.sidecar, quote=True)}">{link}<div>{player}</div></td>',
        f"<td>{image}</td>",
        _cell("job", row.job),
        _cell("seed", row.seed, seed_text, numeric=True),
        _cell("chunking", row.chunking),
        _cell("stereo", row.stereo),
        _cell("sample_rate", row.sample_rate, numeric=True),
        _cell("format", row.format, format_text),
        _cell("duration_s", row.duration_s, _number(row.duration_s, 2), numeric=True),
        _cell("peak_dbfs", row.peak_dbfs, _number(row.peak_dbfs, 2), numeric=True),
        _cell("rms_dbfs", row.rms_dbfs, _number(row.rms_dbfs, 2), numeric=True),
        _cell("loudness_lufs", row.loudness_lufs, _number(row.loudness_lufs, 1), numeric=True),
    ]
    return (
        f'<tr data-status="{row.status}" data-file="{html.escape(row.file, quote=True)}"'
        f' data-identity="{html.escape(row.identity, quote=True)}">' + "".join(cells) + "</tr>"
    )


def index_html(folder: Path, rows: list[ReportRow], problems: list[str]) -> str:
    counts = {status: sum(1 for r in rows if r.status == status) for status in STATUS_RANK}
    ratings = {rating: sum(1 for r in rows if r.status == "done" and r.rating == rating) for rating in RATING_RANK}
    title = f"sda batch {Path(folder).name}"
    headers = "".join(
        f'<th data-key="{key}" data-type="{kind}" title="sort by {html.escape(label)}">{html.escape(label)}</th>'
        if key
        else f"<th>{html.escape(label)}</th>"
        for key, label, kind in _PAGE_COLUMNS
    )
    problem_list = (
        '<h2>Job problems</h2><ul class="problems">' + "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul>"
        if problems
        else ""
    )
    summary = (
        f"{counts['done']} done ({ratings['green']} green, {ratings['yellow']} yellow, {ratings['red']} red), "
        f"{counts['broken']} broken, {counts['failed']} failed; {MANIFEST_FILE} lists them all."
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary)} <a href="{MANIFEST_FILE}">{MANIFEST_FILE}</a></p>
<p id="js-count"></p>
<p class="help">Click a column header to sort (again to reverse); add #sort=rating (or #sort=-loudness_lufs, ...) to the address to sort on load.
Spectrograms: first channel, first {SPECTROGRAM_MAX_S:g} s, log frequency {SPECTROGRAM_F_MIN_HZ:g} Hz to Nyquist, {SPECTROGRAM_FLOOR_DB:g} to {SPECTROGRAM_TOP_DB:g} dB re full scale.</p>
{problem_list}
<table id="outputs">
<thead><tr>{headers}</tr></thead>
<tbody>
{chr(10).join(_row_html(row) for row in rows)}
</tbody>
</table>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def write_report(folder: Path, job_dirs: list[Path]) -> tuple[Path, Path]:
    """Write `manifest.csv` and `index.html` into `folder` (replacing earlier ones) and any
    missing spectrograms into the job folders. Returns (manifest path, index path).
    Raises OSError when the report cannot be written."""
    folder = Path(folder)
    rows, problems = collect_rows(folder, [Path(d) for d in job_dirs])
    manifest_path, index_path = folder / MANIFEST_FILE, folder / INDEX_FILE
    write_atomic(manifest_path, manifest_csv(rows).encode(), replace=True)
    write_atomic(index_path, index_html(folder, rows, problems).encode(), replace=True)
    log.info("report: %s (%d rows) and %s", index_path, len(rows), manifest_path.name)
    return manifest_path, index_path
