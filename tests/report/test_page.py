"""index.html: every file referenced, nothing from the network, every value escaped, and the page's
script run in a real (headless) browser."""

from __future__ import annotations

import html
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from sda.report import write_report
from sda.runner import ItemOutcome
from tests.helpers import chromium_dom, job_folder, parse_page, read_manifest, write_job_outcome


def test_index_references_every_file_and_needs_no_network(sweep):
    folder = sweep["folder"]
    text = (folder / "index.html").read_text()
    page = parse_page(text)
    rows = read_manifest(folder)
    assert len(page.rows) == len(rows)
    done = [row for row in rows if row["status"] == "done"]
    assert sorted(page.audio) == sorted(row["file"] for row in rows if row["file"] and (folder / row["file"]).is_file())
    assert sorted(page.images) == sorted(row["spectrogram"] for row in done)
    for src in page.audio + page.images:
        assert (folder / src).is_file(), src
    assert sweep["failed_reason"] in text and "frame count" in text and "audio file missing" in text
    assert not re.search(r"(?i)\b(src|href)\s*=\s*\"(https?:)?//", text), "nothing is loaded from the network"
    assert "http://" not in text and "https://" not in text


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="no chromium binary on PATH (apt-get install chromium) to run the page's script",
)
def test_page_script_runs_in_a_real_browser_and_sorts_by_rating(sweep, tmp_path):
    folder = sweep["folder"]
    rows = read_manifest(folder)
    dom = chromium_dom((folder / "index.html").as_uri() + "#sort=rating", tmp_path / "profile")
    page = parse_page(dom)
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


def test_every_value_from_a_job_folder_is_escaped_on_the_page(tmp_path):
    hostile = '<script>document.title="owned"</script> & <b>bold</b>'
    job = job_folder(tmp_path, "0", [])
    write_job_outcome(job, [ItemOutcome(5, 'x"><img src=x>', "failed", hostile)], error=hostile)
    orphan = 'gen_<i x="1">&_seed3.wav'  # an audio file without a sidecar, named with markup
    sf.write(job / orphan, np.zeros((100, 1)), 48000)
    write_report(tmp_path, [job])
    text = (tmp_path / "index.html").read_text()
    page = parse_page(text)
    assert page.tag_counts["script"] == 1, "only the page's own script"
    assert "img" not in page.tag_counts and "b" not in page.tag_counts and "i" not in page.tag_counts
    assert text.count(html.escape(hostile)) == 2, "the item's reason and the job's problem, as text"
    by_status = {row["data-status"]: row for row in page.rows}
    assert by_status["failed"]["data-identity"] == 'x"><img src=x>'
    assert by_status["broken"]["data-file"] == f"0/{orphan}"
    assert page.audio == ["0/gen_%3Ci%20x%3D%221%22%3E%26_seed3.wav"]
