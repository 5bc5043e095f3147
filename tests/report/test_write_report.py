"""write_report as the sweep callback and a single run use it, and when it cannot write."""

from __future__ import annotations

import logging

import numpy as np

from sda import GenerationConfig, summary
from sda.outputs import save_result
from sda.report import write_report
from tests.helpers import done_item, read_manifest, read_png, synthetic_result, write_job_outcome


def test_a_single_run_folder_is_its_own_job(tmp_path):
    config = GenerationConfig(duration_s=0.5, device="cpu")
    audio = 0.1 * np.ones((1, 24000)) * np.sin(np.arange(24000))[None]
    saved = save_result(synthetic_result(audio, 7, config), tmp_path)
    write_job_outcome(tmp_path, [done_item(saved)])
    write_report(tmp_path, [tmp_path])
    (row,) = read_manifest(tmp_path)
    assert (row["job"], row["file"], row["status"]) == (".", saved.audio_path.name, "done")
    assert row["spectrogram"].startswith("spectrograms/") and read_png(tmp_path / row["spectrogram"]).shape[:2] == (
        120,
        400,
    )
    assert f'src="{saved.audio_path.name}"' in (tmp_path / "index.html").read_text()


def test_a_report_that_cannot_be_written_is_logged_and_the_sweep_goes_on(tmp_path, monkeypatch, caplog):
    def refuse(folder, job_dirs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(summary, "write_report", refuse)
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("{}")
    write_job_outcome(job, [], token="run")
    with caplog.at_level(logging.ERROR, logger="sda.run"):
        status = summary.finish_run(tmp_path, True, "run", 1)
    assert (tmp_path / "summary.json").is_file()
    assert status == 0
    assert any(
        "could not write the report" in r.getMessage() and "No space left" in r.getMessage() for r in caplog.records
    )
