"""The morning report of a run or sweep: manifest.csv, index.html and spectrogram PNGs.

The sweep under test is made for real: `python -m sda.run -m` with a tiny untrained checkpoint
(two jobs, whose end writes the report through the callback), then two more job folders written
with the real writers (save_result, JobOutcome): a 1 kHz sine, a DC-offset item, a failed item,
a truncated output and an output whose audio was deleted. The callback's `_finish` then runs
again in this process, as a resumed sweep's would.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sda import GenerationConfig, GenerationResult, callbacks
from sda.config import AudioFormat, ExportConfig
from sda.dsp.quality import measure_quality
from sda.dsp.spectrogram import SpectrogramSettings
from sda.files import write_atomic
from sda.model import MelVAE, ModelHyperparameters, save_checkpoint
from sda.outputs import OUTCOME_FILE, output_identity, save_result, verify_output
from sda.report import (
    MANIFEST_COLUMNS,
    SPECTROGRAM_HEIGHT,
    SPECTROGRAM_WIDTH,
    png_bytes,
    spectrogram_row_frequencies,
    write_report,
)
from sda.runner import ItemOutcome, JobOutcome
from sda.seeds import right_seed
from tests.helpers import run_sda

FAILED_SEED = 13
FAILED_REASON = "silent audio (peak -inf dBFS)"
SINE_HZ = 1000.0


# ------------------------------------------------------------------------------------------------
# Building the sweep


def _result(audio: np.ndarray, seed: int, config: GenerationConfig) -> GenerationResult:
    now = datetime.now(UTC)
    return GenerationResult(
        seed=seed,
        right_seed=None,
        audio=audio.astype(np.float32),
        sample_rate=config.export.sample_rate,
        metrics=measure_quality(torch.from_numpy(audio.astype(np.float32)), config.export.sample_rate),
        config=config,
        model_name="synthetic",
        model_sha256="5" * 64,
        device="cpu",
        started_at=now,
        finished_at=now,
    )


def _job_folder(sweep: Path, name: str, overrides: list[str]) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("chunking:\n  mode: crossfade\nstereo:\n  mode: mono\n")
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return job


def _write_outcome(job: Path, items: list[ItemOutcome]) -> None:
    outcome = JobOutcome(output_dir=str(job), items=items, overrides=[])
    write_atomic(job / OUTCOME_FILE, json.dumps(outcome.to_dict(), indent=2).encode())


def _done_item(saved) -> ItemOutcome:
    quality = saved.record["quality"]
    return ItemOutcome(
        saved.record["seed"],
        saved.identity,
        "done",
        "",
        saved.audio_path.name,
        saved.sidecar_path.name,
        quality["rating"],
        quality["peak_dbfs"],
        quality["loudness_lufs"],
    )


def _add_synthetic_job(sweep: Path) -> dict[str, Path]:
    """Job 2: a half-second 1 kHz sine then silence (yellow), a DC-offset noise (red), one failed item."""
    job = _job_folder(sweep, "2", ["export=flac"])
    config = GenerationConfig(
        duration_s=1.0, device="cpu", export=ExportConfig(format=AudioFormat.flac, sample_rate=44100, bit_depth=16)
    )
    sr = config.export.sample_rate
    t = np.arange(sr) / sr
    sine = np.where(t < 0.5, 0.5 * np.sin(2 * math.pi * SINE_HZ * t), 0.0)[None]
    noise = (0.06 + 0.1 * np.random.default_rng(0).standard_normal(sr))[None]
    sine_saved = save_result(_result(sine, 100, config), job)
    noise_saved = save_result(_result(noise, 101, config), job)
    failed = ItemOutcome(FAILED_SEED, output_identity(config, FAILED_SEED, "5" * 64), "failed", FAILED_REASON)
    _write_outcome(job, [_done_item(sine_saved), _done_item(noise_saved), failed])
    return {"sine": sine_saved.audio_path, "noise": noise_saved.audio_path}


def _add_broken_job(sweep: Path) -> dict[str, Path]:
    """Job 3: one output truncated after it was written (a killed copy), one whose audio is gone."""
    job = _job_folder(sweep, "3", [])
    config = GenerationConfig(duration_s=1.0, device="cpu")
    noise = 0.3 * np.random.default_rng(1).standard_normal((1, 48000))
    truncated = save_result(_result(noise, 200, config), job)
    missing = save_result(_result(noise[:, ::-1].copy(), 201, config), job)
    data = truncated.audio_path.read_bytes()
    truncated.audio_path.write_bytes(data[: len(data) // 2])
    missing.audio_path.unlink()
    _write_outcome(job, [_done_item(truncated), _done_item(missing)])
    return {"truncated": truncated.audio_path, "missing": missing.audio_path}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    vae = MelVAE(SpectrogramSettings(), ModelHyperparameters(latent_dim=8, channels=(4, 8, 8)))
    checkpoint = save_checkpoint(vae, {"note": "untrained, for tests"}, root / "tiny.pt")
    folder = root / "sweep"
    proc = run_sda(
        "run",
        "-m",
        "stereo=dual_seed,mono",
        "count=2",
        "duration_s=1",
        "device=cpu",
        "phase.iterations=4",
        f"model.checkpoint={checkpoint}",
        f"hydra.sweep.dir={folder}",
        cwd=root,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first_manifest = list(csv.DictReader((folder / "manifest.csv").open()))
    files = {**_add_synthetic_job(folder), **_add_broken_job(folder)}
    callbacks._finish(folder, callbacks._job_dirs(folder))
    return {"folder": folder, "files": files, "first_manifest": first_manifest, "stderr": proc.stderr}


def _manifest(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _job_dirs(folder: Path) -> list[Path]:
    return callbacks._job_dirs(folder)


def _number(text: str) -> float | None:
    return float(text) if text != "" else None


# ------------------------------------------------------------------------------------------------
# PNG reading (no imaging library: chunks, CRCs, zlib)


def read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB, non-interlaced PNG whose rows all use filter 0 -> `[h, w, 3]` uint8."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: no PNG signature"
    position, chunks = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        tag, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(tag + body) == crc, f"{path}: bad CRC in {tag!r}"
        chunks.append((tag, body))
        position += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all(), "every row uses filter 0"
    return rows[:, 1:].reshape(height, width, 3)


# ------------------------------------------------------------------------------------------------
# The manifest


def test_sweep_end_writes_the_report_through_the_callback(sweep):
    first = sweep["first_manifest"]
    assert len(first) == 4, "two jobs of two outputs each"
    assert {row["status"] for row in first} == {"done"}
    assert {row["job"] for row in first} == {"0", "1"}
    assert "could not write the report" not in sweep["stderr"]


def test_manifest_has_one_row_per_output_matching_sidecars_and_headers(sweep):
    folder = sweep["folder"]
    rows = _manifest(folder)
    assert tuple(rows[0].keys()) == MANIFEST_COLUMNS
    sidecars = sorted(p for job in _job_dirs(folder) for p in job.glob("gen_*.json"))
    audio_files = sorted(
        p for job in _job_dirs(folder) for p in job.glob("gen_*") if p.suffix in (".wav", ".flac", ".ogg")
    )
    failed_items = [
        item
        for job in _job_dirs(folder)
        for item in json.loads((job / OUTCOME_FILE).read_text())["items"]
        if item["status"] == "failed"
    ]
    assert len(rows) == len(sidecars) + len(failed_items)
    assert sorted(row["sidecar"] for row in rows if row["sidecar"]) == [
        p.relative_to(folder).as_posix() for p in sidecars
    ]
    listed = {row["file"] for row in rows if row["file"]}
    assert {p.relative_to(folder).as_posix() for p in audio_files} <= listed

    done = [row for row in rows if row["status"] == "done"]
    assert len(done) == 6  # 4 from the real sweep, the sine and the noise
    for row in done:
        record = json.loads((folder / row["sidecar"]).read_text())
        assert verify_output(folder / row["sidecar"]).ok
        audio_path = folder / row["file"]
        assert row["job"] == audio_path.parent.name
        assert audio_path.name == record["file"]["name"]
        assert int(row["seed"]) == record["seeds"]["left"]
        assert (int(row["right_seed"]) if row["right_seed"] else None) == record["seeds"]["right"]
        assert row["chunking"] == record["config"]["chunking"]["mode"]
        assert row["stereo"] == record["config"]["stereo"]["mode"]
        assert row["format"] == record["file"]["format"] == record["config"]["export"]["format"]
        assert int(row["bit_depth"]) == record["file"]["bit_depth"]
        assert row["identity"] == record["identity"]
        assert row["rating"] == record["quality"]["rating"]
        assert row["rating_reason"] == record["quality"]["rating_reason"]
        assert float(row["duration_s"]) == record["duration_s"]
        assert _number(row["rms_dbfs"]) == pytest.approx(record["quality"]["rms_dbfs"], abs=1e-6)
        assert _number(row["loudness_lufs"]) == pytest.approx(record["quality"]["loudness_lufs"], abs=1e-6)
        # the audio header and samples read back
        info = sf.info(str(audio_path))
        assert int(row["sample_rate"]) == info.samplerate
        assert int(row["frames"]) == info.frames == round(float(row["duration_s"]) * info.samplerate)
        assert int(row["channels"]) == info.channels == (2 if row["stereo"] != "mono" else 1)
        decoded, _ = sf.read(str(audio_path), always_2d=True)
        assert float(row["peak_dbfs"]) == pytest.approx(20 * math.log10(np.abs(decoded).max()), abs=1e-6)
        assert float(row["peak_dbfs"]) <= -1.0 + 1e-9
    assert {row["stereo"] for row in done} == {"dual_seed", "mono"}
    assert all(row["right_seed"] for row in done if row["stereo"] == "dual_seed")


def test_failed_item_from_outcome_appears_with_its_reason(sweep):
    failed = [row for row in _manifest(sweep["folder"]) if row["status"] == "failed"]
    assert len(failed) == 1
    row = failed[0]
    assert (row["job"], int(row["seed"]), row["reason"], row["file"]) == ("2", FAILED_SEED, FAILED_REASON, "")
    # the job's settings come from its other outputs
    assert (row["format"], row["sample_rate"], row["stereo"]) == ("flac", "44100", "mono")


def test_truncated_or_missing_audio_is_broken_not_done(sweep):
    folder, files = sweep["folder"], sweep["files"]
    rows = {row["file"]: row for row in _manifest(folder)}
    truncated = rows[files["truncated"].relative_to(folder).as_posix()]
    missing = rows[files["missing"].relative_to(folder).as_posix()]
    assert truncated["status"] == "broken" and "frame count" in truncated["reason"]
    assert missing["status"] == "broken" and missing["reason"] == "audio file missing"
    assert truncated["spectrogram"] == missing["spectrogram"] == ""
    # what the sidecar measured describes audio that is not on disk: no rating to trust
    assert truncated["rating"] == truncated["peak_dbfs"] == missing["loudness_lufs"] == ""
    assert (truncated["seed"], truncated["frames"]) == ("200", "48000"), "what it was meant to be stays"
    assert sf.info(str(files["truncated"])).frames > 0, "the truncated file still opens: existence proves nothing"


def test_rating_order_and_reasons_of_the_synthetic_items(sweep):
    folder, files = sweep["folder"], sweep["files"]
    rows = {row["file"]: row for row in _manifest(folder)}
    sine = rows[files["sine"].relative_to(folder).as_posix()]
    noise = rows[files["noise"].relative_to(folder).as_posix()]
    assert (sine["rating"], noise["rating"]) == ("yellow", "red")
    assert sine["rating_reason"].startswith("mostly silent") and noise["rating_reason"].startswith("dc offset")


# ------------------------------------------------------------------------------------------------
# Spectrograms


def test_spectrograms_are_valid_pngs_for_every_done_output(sweep):
    folder = sweep["folder"]
    done = [row for row in _manifest(folder) if row["status"] == "done"]
    for row in done:
        png = folder / row["spectrogram"]
        assert png.parent == (folder / row["file"]).parent / "spectrograms"
        image = read_png(png)
        assert image.shape == (SPECTROGRAM_HEIGHT, SPECTROGRAM_WIDTH, 3)
        assert image.max() > 0, "generated noise is not black"


def test_spectrogram_shows_a_1khz_sine_at_1khz_and_only_while_it_sounds(sweep):
    folder = sweep["folder"]
    row = next(r for r in _manifest(folder) if r["file"] == sweep["files"]["sine"].relative_to(folder).as_posix())
    image = read_png(folder / row["spectrogram"]).astype(np.int64)
    brightness = image.sum(axis=2)  # the colour map's R+G+B rises with level
    frequencies = spectrogram_row_frequencies(44100)
    sounding = brightness[:, : SPECTROGRAM_WIDTH // 2 - 10]
    brightest_row = int(sounding.mean(axis=1).argmax())
    assert abs(math.log(frequencies[brightest_row] / SINE_HZ)) < math.log(1.06), frequencies[brightest_row]
    # the second half is digital silence plus 16-bit dither: far below the floor of the picture
    assert brightness[brightest_row, SPECTROGRAM_WIDTH // 2 + 10 :].max() < 0.1 * brightness[brightest_row, :100].min()
    # energy far from 1 kHz (a Hann window's sidelobes) stays dark
    far = np.abs(np.log(frequencies / SINE_HZ)) > math.log(4)
    assert sounding[far].max() < 0.5 * sounding[brightest_row].min()


def test_rerun_keeps_existing_spectrograms_and_replaces_the_report(sweep, tmp_path):
    folder = sweep["folder"]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    pngs = sorted(copy.glob("*/spectrograms/*.png"))
    assert len(pngs) == 6
    for p in pngs:  # a redrawn picture would be black again
        p.write_bytes(png_bytes(np.zeros((SPECTROGRAM_HEIGHT, SPECTROGRAM_WIDTH, 3), np.uint8)))
    stamped = {p: p.stat().st_mtime_ns for p in pngs}
    pngs[0].unlink()
    (copy / "manifest.csv").write_text("stale\n")
    manifest, index = write_report(copy, _job_dirs(copy))
    assert manifest.read_text().startswith(",".join(MANIFEST_COLUMNS))
    assert index.is_file()
    assert read_png(pngs[0]).max() > 0, "a deleted spectrogram is drawn again"
    for p in pngs[1:]:
        assert p.stat().st_mtime_ns == stamped[p] and read_png(p).max() == 0, f"{p.name} was redrawn"
    assert not list(copy.rglob("*.tmp")), "no temporary files left"


# ------------------------------------------------------------------------------------------------
# The page


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.audio: list[str] = []
        self.images: list[str] = []
        self.attributes: dict[str, dict[str, str]] = {}
        self.texts: dict[str, str] = {}
        self._open_id: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-status" in attributes:
            self.rows.append(attributes)
        if tag == "audio":
            self.audio.append(attributes.get("src", ""))
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        if "id" in attributes:
            self.attributes[attributes["id"]] = attributes
            self._open_id = attributes["id"]
        if tag == "body":
            self.attributes["body"] = attributes

    def handle_data(self, data):
        if self._open_id:
            self.texts[self._open_id] = self.texts.get(self._open_id, "") + data

    def handle_endtag(self, tag):
        self._open_id = None


def _parse(text: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(text)
    return parser


def test_index_references_every_file_and_needs_no_network(sweep):
    folder = sweep["folder"]
    text = (folder / "index.html").read_text()
    page = _parse(text)
    rows = _manifest(folder)
    assert len(page.rows) == len(rows)
    done = [row for row in rows if row["status"] == "done"]
    assert sorted(page.audio) == sorted(row["file"] for row in rows if row["file"] and (folder / row["file"]).is_file())
    assert sorted(page.images) == sorted(row["spectrogram"] for row in done)
    for src in page.audio + page.images:
        assert (folder / src).is_file(), src
    assert FAILED_REASON in text and "frame count" in text and "audio file missing" in text
    assert not re.search(r"(?i)\b(src|href)\s*=\s*\"(https?:)?//", text), "nothing is loaded from the network"
    assert "http://" not in text and "https://" not in text


def _chromium_dump(url: str, profile: Path) -> str:
    binary = shutil.which("chromium")
    proc = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="no chromium binary on PATH (apt-get install chromium) to run the page's script",
)
def test_page_script_runs_in_a_real_browser_and_sorts_by_rating(sweep, tmp_path):
    folder = sweep["folder"]
    rows = _manifest(folder)
    dom = _chromium_dump((folder / "index.html").as_uri() + "#sort=rating", tmp_path / "profile")
    page = _parse(dom)
    # the script ran: it counted the rows and sorted them
    assert page.attributes["outputs"].get("data-js-rows") == str(len(rows))
    assert page.attributes["body"].get("data-sorted-by") == "rating"
    assert page.texts["js-count"].startswith(f"{len(rows)} rows: 6 done, 2 broken, 1 failed")
    assert len(page.rows) == len(rows)
    assert sorted(r["data-file"] for r in page.rows if r["data-file"]) == sorted(
        row["file"] for row in rows if row["file"]
    )
    assert [int(r["data-position"]) for r in page.rows] == list(range(len(rows)))
    rank = {"green": 0, "yellow": 1, "red": 2}
    by_file = {row["file"]: row for row in rows if row["file"]}
    order = [
        rank[by_file[r["data-file"]]["rating"]]
        if r["data-status"] == "done"
        else 3 + ("broken", "failed").index(r["data-status"])
        for r in page.rows
    ]
    assert order == sorted(order), order
    assert order[-1] == 4, "the failed item comes last"


def test_jobs_that_died_failed_whole_or_lost_a_sidecar_are_reported(tmp_path):
    folder = tmp_path / "sweep"
    # every item of this job failed: its settings come from Hydra's config.yaml in the folder
    all_failed = _job_folder(folder, "0", ["stereo=dual_seed"])
    (all_failed / ".hydra" / "config.yaml").write_text(
        "duration_s: 2.0\nchunking:\n  mode: latent_interp\nstereo:\n  mode: dual_seed\n"
        "export:\n  format: ogg\n  sample_rate: 48000\n  bit_depth: 16\n"
    )
    _write_outcome(all_failed, [ItemOutcome(5, "ab" * 8, "failed", "RuntimeError: boom")])
    # this job's process died: no outcome.json, and an audio file whose sidecar is gone
    died = _job_folder(folder, "1", [])
    sf.write(died / "gen_20260101T000000Z_seed3.wav", np.zeros((100, 1)), 48000)
    manifest, index = write_report(folder, [all_failed, died])
    rows = _manifest(folder)
    assert [(r["job"], r["status"], r["reason"]) for r in rows] == [
        ("0", "failed", "RuntimeError: boom"),
        ("1", "broken", "no sidecar"),
    ]
    failed = rows[0]
    assert (failed["chunking"], failed["stereo"], failed["format"], failed["duration_s"]) == (
        "latent_interp",
        "dual_seed",
        "ogg",
        "2",
    )
    assert int(failed["right_seed"]) == right_seed(5)
    text = index.read_text()
    assert "job 1: no outcome.json" in text
    assert 'src="1/gen_20260101T000000Z_seed3.wav"' in text


def test_a_single_run_folder_is_its_own_job(tmp_path):
    config = GenerationConfig(duration_s=0.5, device="cpu")
    saved = save_result(_result(0.1 * np.ones((1, 24000)) * np.sin(np.arange(24000))[None], 7, config), tmp_path)
    _write_outcome(tmp_path, [_done_item(saved)])
    write_report(tmp_path, [tmp_path])
    (row,) = _manifest(tmp_path)
    assert (row["job"], row["file"], row["status"]) == (".", saved.audio_path.name, "done")
    assert row["spectrogram"].startswith("spectrograms/") and read_png(tmp_path / row["spectrogram"]).shape[:2] == (
        120,
        400,
    )
    assert f'src="{saved.audio_path.name}"' in (tmp_path / "index.html").read_text()


# ------------------------------------------------------------------------------------------------
# Failure of the report itself


def test_a_report_that_cannot_be_written_is_logged_and_the_sweep_goes_on(tmp_path, monkeypatch, caplog):
    def refuse(folder, job_dirs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(callbacks, "write_report", refuse)
    job = tmp_path / "0"
    job.mkdir()
    _write_outcome(job, [])
    with caplog.at_level(logging.ERROR, logger="sda.run"):
        callbacks._finish(tmp_path, [job])
    assert (tmp_path / "summary.json").is_file()
    assert callbacks.RunStatus.exit_code == 0
    assert any(
        "could not write the report" in r.getMessage() and "No space left" in r.getMessage() for r in caplog.records
    )
