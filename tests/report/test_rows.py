"""manifest.csv: one row per output, failed item and orphaned file of the sweep, read back with
the csv module and checked against sidecars and the audio itself; formula-like text made inert."""

from __future__ import annotations

import csv
import html
import io
import json
import math

import numpy as np
import pytest
import soundfile as sf

from sda import summary
from sda.outputs import OUTCOME_FILE, verify_output
from sda.report import write_report
from sda.report.rows import MANIFEST_COLUMNS, ReportRow, manifest_csv
from sda.runner import ItemOutcome
from sda.seeds import right_seed
from tests.helpers import compose_run, job_folder, read_manifest, write_job_outcome


def _number(text: str) -> float | None:
    return float(text) if text != "" else None


def test_sweep_end_writes_the_report_through_the_callback(sweep):
    first = sweep["first_manifest"]
    assert len(first) == 4, "two jobs of two outputs each"
    assert {row["status"] for row in first} == {"done"}
    assert {row["job"] for row in first} == {"0", "1"}
    assert "could not write the report" not in sweep["stderr"]


def test_manifest_has_one_row_per_output_matching_sidecars_and_headers(sweep):
    folder = sweep["folder"]
    rows = read_manifest(folder)
    assert tuple(rows[0].keys()) == MANIFEST_COLUMNS
    sidecars = sorted(p for job in summary.job_folders(folder, multirun=True) for p in job.glob("gen_*.json"))
    audio_files = sorted(
        p
        for job in summary.job_folders(folder, multirun=True)
        for p in job.glob("gen_*")
        if p.suffix in (".wav", ".flac", ".ogg")
    )
    failed_items = [
        item
        for job in summary.job_folders(folder, multirun=True)
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
        # the untrained checkpoint keeps no training windows: the check was unavailable, said so
        assert record["memorization"]["status"] == "unavailable" and row["nearest_training_db"] == ""
    assert {row["stereo"] for row in done} == {"dual_seed", "mono"}
    assert all(row["right_seed"] for row in done if row["stereo"] == "dual_seed")


def test_failed_item_from_outcome_appears_with_its_reason(sweep):
    failed = [row for row in read_manifest(sweep["folder"]) if row["status"] == "failed"]
    assert len(failed) == 1
    row = failed[0]
    assert (row["job"], int(row["seed"]), row["reason"], row["file"]) == (
        "2",
        sweep["failed_seed"],
        sweep["failed_reason"],
        "",
    )
    # the job's settings come from its other outputs
    assert (row["format"], row["sample_rate"], row["stereo"]) == ("flac", "44100", "mono")


def test_truncated_or_missing_audio_is_broken_not_done(sweep):
    folder, files = sweep["folder"], sweep["files"]
    rows = {row["file"]: row for row in read_manifest(folder)}
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
    rows = {row["file"]: row for row in read_manifest(folder)}
    sine = rows[files["sine"].relative_to(folder).as_posix()]
    noise = rows[files["noise"].relative_to(folder).as_posix()]
    assert (sine["rating"], noise["rating"]) == ("yellow", "red")
    assert sine["rating_reason"].startswith("mostly silent") and noise["rating_reason"].startswith("dc offset")


def test_jobs_that_died_failed_whole_or_lost_a_sidecar_are_reported(tmp_path):
    folder = tmp_path / "sweep"
    # every item of this job failed: its settings come from the outcome sda recorded
    all_failed = job_folder(folder, "0", ["stereo=dual_seed"])
    settings = compose_run("duration_s=2", "chunking=latent_interp", "stereo=dual_seed", "export=ogg")
    write_job_outcome(all_failed, [ItemOutcome(5, "ab" * 8, "failed", "RuntimeError: boom")], config=settings)
    # this job's process died: no outcome.json, and an audio file whose sidecar is gone
    died = job_folder(folder, "1", [])
    sf.write(died / "gen_20260101T000000Z_seed3.wav", np.zeros((100, 1)), 48000)
    manifest, index = write_report(folder, [all_failed, died])
    rows = read_manifest(folder)
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


# ------------------------------------------------------------------------------------------------
# Text a spreadsheet would run as a formula


FORMULA_TEXTS = ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]


def test_formula_like_text_gets_an_apostrophe_and_numbers_stay_numbers():
    rows = [
        ReportRow(job="0", status="failed", reason=text, seed=index, peak_dbfs=-1.0, rms_dbfs=-23.25)
        for index, text in enumerate(FORMULA_TEXTS)
    ]
    rows.append(ReportRow(job="-1", status="done", file="gen_x_seed9.wav", rating="green", loudness_lufs=-14.0))
    read = list(csv.DictReader(io.StringIO(manifest_csv(rows), newline="")))
    assert [row["reason"] for row in read[: len(FORMULA_TEXTS)]] == ["'" + text for text in FORMULA_TEXTS]
    for row in read[: len(FORMULA_TEXTS)]:
        assert (float(row["peak_dbfs"]), float(row["rms_dbfs"])) == (-1.0, -23.25)
        assert row["peak_dbfs"] == "-1", "a number is written as a number, never quoted"
    last = read[-1]
    assert (last["job"], last["file"], last["rating"]) == ("'-1", "gen_x_seed9.wav", "green")
    assert last["reason"] == "" and float(last["loudness_lufs"]) == -14.0


def test_a_failure_reason_that_looks_like_a_formula_is_inert_in_the_manifest_only(tmp_path):
    job = job_folder(tmp_path, "0", [])
    reason = "=cmd|' /C calc'!A0"
    write_job_outcome(job, [ItemOutcome(5, "ab" * 8, "failed", reason)])
    write_report(tmp_path, [job])
    (row,) = read_manifest(tmp_path)
    assert (row["status"], row["reason"], row["seed"]) == ("failed", "'" + reason, "5")
    page = (tmp_path / "index.html").read_text()
    assert html.escape(reason) in page and html.escape("'" + reason) not in page, "the page shows it as it is"
