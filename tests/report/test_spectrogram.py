"""Spectrogram PNGs: valid files read back without an imaging library, a 1 kHz sine drawn at
1 kHz and only while it sounds, and pictures never redrawn once there."""

from __future__ import annotations

import math
import shutil

import numpy as np

from sda import summary
from sda.report import write_report
from sda.report.rows import MANIFEST_COLUMNS
from sda.report.spectrogram import SPECTROGRAM_HEIGHT, SPECTROGRAM_WIDTH, png_bytes, spectrogram_row_frequencies
from tests.helpers import read_manifest, read_png


def test_spectrograms_are_valid_pngs_for_every_done_output(sweep):
    folder = sweep["folder"]
    done = [row for row in read_manifest(folder) if row["status"] == "done"]
    for row in done:
        png = folder / row["spectrogram"]
        assert png.parent == (folder / row["file"]).parent / "spectrograms"
        image = read_png(png)
        assert image.shape == (SPECTROGRAM_HEIGHT, SPECTROGRAM_WIDTH, 3)
        assert image.max() > 0, "generated noise is not black"


def test_spectrogram_shows_a_1khz_sine_at_1khz_and_only_while_it_sounds(sweep):
    folder = sweep["folder"]
    row = next(r for r in read_manifest(folder) if r["file"] == sweep["files"]["sine"].relative_to(folder).as_posix())
    image = read_png(folder / row["spectrogram"]).astype(np.int64)
    brightness = image.sum(axis=2)  # the colour map's R+G+B rises with level
    frequencies = spectrogram_row_frequencies(44100)
    sounding = brightness[:, : SPECTROGRAM_WIDTH // 2 - 10]
    brightest_row = int(sounding.mean(axis=1).argmax())
    assert abs(math.log(frequencies[brightest_row] / sweep["sine_hz"])) < math.log(1.06), frequencies[brightest_row]
    # the second half is digital silence plus 16-bit dither: far below the floor of the picture
    assert brightness[brightest_row, SPECTROGRAM_WIDTH // 2 + 10 :].max() < 0.1 * brightness[brightest_row, :100].min()
    # energy far from 1 kHz (a Hann window's sidelobes) stays dark
    far = np.abs(np.log(frequencies / sweep["sine_hz"])) > math.log(4)
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
    manifest, index = write_report(copy, summary.job_folders(copy, multirun=True))
    assert manifest.read_text().startswith(",".join(MANIFEST_COLUMNS))
    assert index.is_file()
    assert read_png(pngs[0]).max() > 0, "a deleted spectrogram is drawn again"
    for p in pngs[1:]:
        assert p.stat().st_mtime_ns == stamped[p] and read_png(p).max() == 0, f"{p.name} was redrawn"
    assert not list(copy.rglob("*.tmp")), "no temporary files left"
