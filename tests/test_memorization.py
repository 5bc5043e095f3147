"""The memorization check of every output (sda.memorization): what a checkpoint keeps of its
training windows, playback and replay found, the prior spared, the verdict in the rating, the
sidecar, the job's outcome and the report, and a format-1 checkpoint still rendering."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sda import GenerationConfig, GenerationPipeline, load_model
from sda.config import CorpusSource, PhaseConfig, QualityConfig, TrainConfig, to_train_config
from sda.data.folder import load_audio_folder
from sda.data.windows import split_by_file
from sda.dsp.spectrogram import SpectrogramSettings, log_mel
from sda.errors import ConfigError
from sda.memorization import check_output
from sda.model import GlobalLatentHyperparameters, GlobalLatentVAE, checkpoint_record
from sda.novelty import NEAR_COPY_DB
from sda.outputs import save_result, verify_output
from sda.preflight import compose_config
from sda.report import write_report
from sda.runner import run_job
from sda.summary import summarize
from sda.training import train_model
from tests.helpers import TINY_MODEL, read_manifest

SR = 48000

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_trained(tiny_dataset: Path, tmp_path_factory):
    """A tiny model trained for one epoch on the tiny dataset: its checkpoint's training summary."""
    models = tmp_path_factory.mktemp("memorization_models")
    overrides = [f"dataset.path={tiny_dataset}", "name=tiny", f"models_dir={models}", "max_epochs=1", "device=cpu"]
    cfg = to_train_config(compose_config("train", [*overrides, *TINY_MODEL], TrainConfig))
    result = train_model(cfg, show_progress=False)
    return load_model(result.model_path, "cpu")


def render(model, seeds, **fields):
    return GenerationPipeline(model, GenerationConfig(device="cpu", **fields)).generate(list(seeds))


def test_a_checkpoint_keeps_its_training_windows_and_nothing_of_its_validation_files(tiny_trained, tiny_dataset):
    summary = tiny_trained.summary
    record = tiny_trained.training
    clips = list(load_audio_folder(tiny_dataset).clips)
    train, validation = split_by_file(
        clips, record["config"]["dataset"]["validation_fraction"], record["config"]["seed"]
    )
    assert set(summary.files) == {c.path.as_posix() for c in train}
    assert not set(summary.files) & {c.path.as_posix() for c in validation}
    assert set(summary.novelty.files) == set(summary.files)
    assert len(summary) == len(summary.renditions) == record["dataset"]["train_windows"]
    hop_s = record["config"]["dataset"]["hop_fraction"] * tiny_trained.settings.window_s
    assert torch.allclose(summary.starts_s / hop_s, (summary.starts_s / hop_s).round())
    # the latents are the posterior means of those windows
    clip = next(c for c in train if c.path.as_posix() == summary.files[0])
    window = torch.from_numpy(clip.audio[:SR].copy())[None]
    from_model = tiny_trained.vae.encode(log_mel(window, tiny_trained.settings))[0][0]
    torch.testing.assert_close(summary.latents[0].float(), from_model, atol=2e-3, rtol=1e-2)


def test_playback_of_training_audio_is_a_near_copy_and_an_unseen_file_is_not(tiny_trained, tiny_dataset):
    summary = tiny_trained.summary
    clips = {c.path.as_posix(): c for c in load_audio_folder(tiny_dataset).clips}
    quality = QualityConfig()
    trained = clips[summary.files[1]].audio
    played_back = 0.3 * trained[SR // 4 : SR // 4 + int(1.5 * SR)][None]  # shifted, another level
    check = check_output(summary, played_back, SR, quality)
    assert check.training_audio.distance_db < NEAR_COPY_DB and check.near_copy
    assert check.training_audio.file == summary.files[1]
    assert abs(check.training_audio.start_s + check.training_audio.clip_start_s - 0.25) <= 0.26
    assert check.verdict.startswith(f"near copy of {summary.files[1]} at ")
    unseen = next(c for name, c in clips.items() if name not in summary.files)
    check = check_output(summary, unseen.audio[None], SR, quality)
    assert not check.near_copy and check.nearest.distance_db > 1.0


def test_corpus_replays_are_flagged_as_near_copies_and_prior_renders_are_not(shipped, tmp_path):
    replays = render(shipped, [0, 1, 2, 3], duration_s=2.0, source=CorpusSource(spread=0.0))
    priors = render(shipped, [0, 1, 2, 3], duration_s=2.0)
    for replay in replays:
        check = replay.memorization
        assert check.near_copy and check.model_rendition.distance_db < 0.05, check.to_dict()
        assert replay.metrics.rating == "red" and replay.metrics.rating_reason.startswith("near copy of ")
        # the recording itself lies further: the model's memory is blurred (the reason for renditions)
        assert check.training_audio.distance_db > check.model_rendition.distance_db
    for prior in priors:
        assert not prior.memorization.near_copy and prior.memorization.nearest.distance_db > 1.0
        assert not prior.metrics.rating_reason.startswith("near copy")
    record = save_result(replays[0], tmp_path).record["memorization"]
    assert record["status"] == "checked" and record["near_copy"] and not record["rejected"]
    assert record["reference"] == "model_rendition" and record["file"] in shipped.summary.files
    assert record["distance_db"] == record["model_rendition"]["distance_db"]
    assert record["training_audio"]["distance_db"] > record["distance_db"]


def test_rejected_copies_are_written_recorded_as_rejected_and_judged_again_on_resume(shipped, tmp_path):
    config = GenerationConfig(
        device="cpu",
        count=2,
        duration_s=1.0,
        source=CorpusSource(spread=0.0),
        phase=PhaseConfig(iterations=4),
        quality=QualityConfig(reject_copies=True),
    )
    folder = tmp_path / "job"
    outcome = run_job(config, folder, show_progress=False, run_token="t")
    assert [item.status for item in outcome.items] == ["rejected", "rejected"]
    assert outcome.count("done") == 0 and not outcome.failed
    # The runner checks with its writing what the Python API checks in generate(): the same record.
    inline = GenerationPipeline(shipped, config).generate([0, 1])
    for item, result in zip(outcome.items, inline, strict=True):
        written = json.loads((folder / item.sidecar).read_text())
        assert written["memorization"] == result.memorization.to_dict()
        assert written["quality"]["rating_reason"] == result.metrics.rating_reason
    for item in outcome.items:
        assert item.reason.startswith("near copy of ")
        check = verify_output(folder / item.sidecar)
        assert check.ok and check.record["memorization"]["rejected"], "written and complete, never lost"
    counts = summarize(folder, False, "t", 1)
    assert (counts["done"], counts["rejected"], counts["ok"]) == (0, 2, True)

    again = run_job(config, folder, show_progress=False, run_token="t2")
    assert [item.status for item in again.items] == ["rejected", "rejected"]
    assert len(list(folder.glob("gen_*.wav"))) == 2, "nothing made twice"
    write_report(folder, [folder])
    rows = read_manifest(folder)
    assert [row["status"] for row in rows] == ["rejected", "rejected"]
    assert all(float(row["nearest_training_db"]) < 0.4 and row["nearest_training_file"] for row in rows)
    page = (folder / "index.html").read_text()
    assert 'data-key="nearest_training_db"' in page and "2 rejected as near copies" in page

    # judged again under the settings of the run that comes into the folder
    lenient = dataclasses.replace(config, quality=QualityConfig(min_novelty=0.0, reject_copies=True))
    assert [item.status for item in run_job(lenient, folder, show_progress=False).items] == ["skipped", "skipped"]
    write_report(folder, [folder])
    assert [row["status"] for row in read_manifest(folder)] == ["done", "done"]


def test_a_format_1_checkpoint_renders_with_the_check_unavailable_and_refuses_corpus(tmp_path):
    torch.manual_seed(0)
    vae = GlobalLatentVAE(SpectrogramSettings(), GlobalLatentHyperparameters(latent_dim=8, channels=(4, 8, 8)))
    record = checkpoint_record(vae, {"note": "format 1"})
    record["format_version"] = 1
    del record["training_summary"]
    torch.save(record, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt", "cpu")
    [result] = render(old, [0], duration_s=0.5, phase=PhaseConfig(iterations=1))
    saved = save_result(result, tmp_path / "out").record["memorization"]
    assert saved["status"] == "unavailable" and "format 1" in saved["reason"] and saved["distance_db"] is None
    with pytest.raises(ConfigError, match=r"^source='corpus' is not allowed: a model that keeps its training windows"):
        render(old, [0], duration_s=0.5, source=CorpusSource())
    assert json.loads(json.dumps(saved)) == saved
    assert np.isfinite(result.audio).all()
