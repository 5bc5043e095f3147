"""The report of a one-shot batch: a short waveform per hit instead of a spectrogram, and a kit
view that plays one hit per row on a click, sortable by loudness and length; its script run in a
real (headless) browser."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from sda.config import FlacExport, GenerationConfig, OneshotChunking
from sda.outputs import save_result
from sda.report import write_report
from sda.report.waveform import WAVEFORM_HEIGHT, WAVEFORM_INK, WAVEFORM_SPAN_S, WAVEFORM_WIDTH, waveform_image
from tests.helpers import (
    chromium_dom,
    done_item,
    job_folder,
    parse_page,
    read_manifest,
    read_png,
    synthetic_result,
    write_job_outcome,
)

RATE = 48000
# (length in s, peak): hits of different lengths and loudness, and one texture-length output.
HITS = [(0.08, 0.9), (0.4, 0.2), (0.2, 0.5), (0.6, 0.05)]


def decaying_hit(seconds: float, peak: float, seed: int) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    x = np.random.default_rng(seed).standard_normal(t.size) * np.exp(-t / (seconds / 5))
    x[-48:] *= np.linspace(1, 0, 48)
    return (peak * x / np.abs(x).max())[None]


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict:
    """A job folder of four one-shots (written with the real writers) and one texture, reported."""
    folder = tmp_path_factory.mktemp("kit")
    job = job_folder(folder, "0", ["chunking=oneshot"])
    hits = GenerationConfig(duration_s=1.0, device="cpu", chunking=OneshotChunking(), export=FlacExport())
    saved = [save_result(synthetic_result(decaying_hit(s, p, i), i, hits), job) for i, (s, p) in enumerate(HITS)]
    texture = GenerationConfig(duration_s=1.0, device="cpu")
    saved.append(save_result(synthetic_result(decaying_hit(1.0, 0.5, 9) * 0 + 0.1, 9, texture), job))
    write_job_outcome(job, [done_item(s) for s in saved])
    write_report(folder, [job])
    return {"folder": folder, "saved": saved}


def test_a_one_shot_gets_a_waveform_and_anything_else_a_spectrogram(kit):
    rows = {Path(r["file"]).name: r for r in read_manifest(kit["folder"])}
    for saved in kit["saved"][:4]:
        row = rows[saved.audio_path.name]
        assert row["chunking"] == "oneshot" and row["spectrogram"] == ""
        assert row["waveform"].startswith("0/spectrograms/") and row["waveform"].endswith("_waveform.png")
        image = read_png(kit["folder"] / row["waveform"])
        assert image.shape == (WAVEFORM_HEIGHT, WAVEFORM_WIDTH, 3)
    texture = rows[kit["saved"][4].audio_path.name]
    assert texture["waveform"] == "" and texture["spectrogram"].endswith(".png")


def test_a_waveform_spans_one_second_so_a_short_hit_looks_short():
    image = waveform_image(decaying_hit(0.25, 0.9, 0).T, RATE)
    inked = np.all(image == WAVEFORM_INK, axis=-1).any(axis=0)  # columns holding ink
    last_inked = int(np.flatnonzero(inked)[-1])
    assert last_inked == pytest.approx(0.25 / WAVEFORM_SPAN_S * WAVEFORM_WIDTH, abs=2)
    # full scale at the edges: a peak of 0.9 (either sign) reaches within 10 % of the edge
    rows_inked = np.flatnonzero(np.all(image == WAVEFORM_INK, axis=-1).any(axis=1))
    assert min(rows_inked[0], WAVEFORM_HEIGHT - 1 - rows_inked[-1]) <= 0.1 * WAVEFORM_HEIGHT / 2 + 1


def test_the_kit_lists_every_hit_once_with_its_length_loudness_and_true_peak(kit):
    text = (kit["folder"] / "index.html").read_text()
    page = parse_page(text)
    assert text.count('<tr class="hit"') == len(HITS)
    rows = {Path(r["file"]).name: r for r in read_manifest(kit["folder"])}
    for saved, (seconds, _) in zip(kit["saved"], HITS, strict=False):
        row = rows[saved.audio_path.name]
        assert float(row["length_s"]) == pytest.approx(seconds, abs=1 / RATE)
        assert f'data-key="length_ms" data-v="{1000 * float(row["length_s"]):.10g}"' in text
        assert f'data-key="loudness_lufs" data-v="{float(row["loudness_lufs"]):.10g}"' in text
    assert 'data-key="novelty_db"' not in text, "a figure no hit has is left out"
    assert len(page.images) == 2 * len(HITS) + 1  # each hit's waveform in both tables, one spectrogram


# Loads the report in a frame, clicks the kit's second row and writes what happened into its own
# page, where --dump-dom shows it.
HARNESS = """<!DOCTYPE html><html><body><pre id="result"></pre>
<iframe id="report" src="index.html#sort=-loudness_lufs" width="1200" height="800"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {
  var doc = this.contentDocument, kit = doc.getElementById("kit"), player = doc.getElementById("kit-player");
  var rows = Array.prototype.slice.call(kit.tBodies[0].rows);
  var loudness = rows.map(function (r) {
    return r.querySelector('td[data-key="loudness_lufs"]').getAttribute("data-v");
  });
  rows[1].click();
  var playing = Array.prototype.filter.call(kit.tBodies[0].rows, function (r) {
    return r.hasAttribute("data-playing");
  });
  document.getElementById("result").textContent = JSON.stringify({
    sorted: kit.getAttribute("data-sorted-by"), js_rows: kit.getAttribute("data-js-rows"), loudness: loudness,
    clicked: rows[1].getAttribute("data-src"), src: player.getAttribute("src"),
    playing: playing.map(function (r) { return r.getAttribute("data-src"); })
  });
});
</script></body></html>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium binary on PATH to run the page's script")
def test_the_kit_sorts_by_loudness_and_plays_the_hit_clicked_in_a_real_browser(kit, tmp_path):
    harness = kit["folder"] / "harness.html"
    harness.write_text(HARNESS)
    dom = chromium_dom(
        harness.as_uri(),
        tmp_path / "profile",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
        "--virtual-time-budget=5000",
    )
    state = json.loads(parse_page(dom).texts["result"])
    assert state["js_rows"] == str(len(HITS)) and state["sorted"] == "-loudness_lufs"
    loudness = [float(v) for v in state["loudness"]]
    assert loudness == sorted(loudness, reverse=True)
    assert state["src"] == state["clicked"] and state["playing"] == [state["clicked"]]
    assert all(math.isfinite(v) for v in loudness)
