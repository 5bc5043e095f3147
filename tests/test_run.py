"""`python -m sda.run`: bad values stop it before anything is written, a run or sweep writes
audio and sidecars into Hydra's folders (wherever it is launched from), and one process loads the
model once for all its jobs.

The commands run for real in a subprocess whose working folder is `tmp_path` (not the repository),
so Hydra's relative `outputs/...` folders land there, and the shipped `default` model and conf/
must be found from the package."""

from __future__ import annotations

import json
import logging
import os
import pstats
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import sda.runner
from sda.errors import ConfigError
from sda.files import file_sha256
from sda.model import PACKAGED_MODELS_DIR
from sda.replay import override_text, reproduce_overrides
from sda.run import preflight
from sda.runner import get_model, run_job
from tests.helpers import ONE_THREAD, REPO, compose_run, sda_run, summary_line

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
TIME = re.compile(r"\d{2}-\d{2}-\d{2}")

pytestmark = pytest.mark.usefixtures("one_thread")


def sidecars(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("gen_*.json"))]


def only_folder(parent: Path) -> Path:
    children = [p for p in parent.iterdir() if p.is_dir()]
    assert len(children) == 1, children
    return children[0]


@pytest.mark.parametrize(
    "override, start, allowed",
    [
        ("+export.foo=1", "export.foo=", "unknown key; keys of export=wav: bit_depth, loudness_lufs, normalize"),
        ("stereo.width=0.5", "stereo.width=", "not a key of this option; keys of stereo=mono: none"),
        ("chunking=nope", "chunking='nope'", "choose one of crossfade, latent_interp, oneshot"),
    ],
)
def test_bad_value_exits_2_with_one_line_before_any_folder_is_made(tmp_path, override, start, allowed):
    proc = sda_run(override, "duration_s=0.5", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {start}") and allowed in lines[0]
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no outputs/ folder: pre-flight ran before Hydra


def test_missing_checkpoint_is_a_config_error_found_without_loading_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        preflight(["-m", "model.checkpoint=default,no_such_model.pt", "duration_s=0.5"])
    assert str(info.value).startswith("model.checkpoint='no_such_model.pt' is not allowed")
    assert str(tmp_path / "no_such_model.pt") in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_bare_name_of_a_file_in_the_working_folder_says_where_a_model_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("# my notes, not a model")
    with pytest.raises(ConfigError) as info:
        preflight(["model.checkpoint=README.md", "duration_s=0.5"])
    message = str(info.value)
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_MODELS_DIR.glob("*.pt")))
    assert message == (
        f"model.checkpoint='README.md' is not allowed: a bare name means a model: "
        f"{tmp_path / 'models' / 'README.md.pt'} or a model shipped with sda ({shipped}), and neither exists; "
        f"for the file README.md in {tmp_path}, give a path: ./README.md"
    )
    preflight(["model.checkpoint=./README.md", "duration_s=0.5"])  # found: a path names a file
    assert list(tmp_path.iterdir()) == [tmp_path / "README.md"]


@pytest.mark.slow
def test_run_writes_count_outputs_with_consecutive_seeds_into_the_dated_run_folder(tmp_path):
    proc = sda_run("duration_s=0.5", "seed=5", "count=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    day = only_folder(tmp_path / "outputs")
    run_dir = only_folder(day)
    assert DATE.fullmatch(day.name) and TIME.fullmatch(run_dir.name)

    records = sidecars(run_dir)
    assert sorted(r["seed"] for r in records) == [5, 6, 7]
    for record in records:
        audio = run_dir / record["file"]["name"]
        info = sf.info(str(audio))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (48000, 1, 24000, "PCM_24")
        assert file_sha256(audio) == record["file"]["sha256"]
        assert record["hydra"]["overrides"] == ["duration_s=0.5", "seed=5", "count=3"]
        assert record["hydra"]["output_dir"] == str(run_dir)
        # The model named `default` is the one inside the package, found from any working folder.
        assert record["model"]["name"] == "default"
        assert record["model"]["sha256"] == file_sha256(PACKAGED_MODELS_DIR / "default.pt")

    outcome = json.loads((run_dir / "outcome.json").read_text())
    assert outcome["counts"] == {"done": 3, "skipped": 0, "failed": 0, "rejected": 0}
    assert [item["seed"] for item in outcome["items"]] == [5, 6, 7]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ok"] is True
    # Where the time went: the job's stages, and the run's around them (what sda.bench prints).
    job = outcome["timings_s"]
    assert job["write_busy_s"] > 0 and job["render_s"] >= job["decode_s"] + job["phase_s"] > 0
    assert 0 < job["load_s"] + job["render_s"] <= outcome["elapsed_s"] < summary["timings_s"]["hydra_s"]
    assert {"preflight_s", "hydra_s", "summary_s", "report_s", "main_started_unix"} <= set(summary["timings_s"])
    # The plan and its estimate come first, once the folder is locked.
    plan = [line for line in proc.stderr.splitlines() if line.startswith("sda: plan: ")]
    assert plan == ["sda: plan: 3 files in 1 job, 1.5 s of audio (crossfade mono wav 48000 Hz), about 265 kB on disk"]
    # One log line per finished file, no progress bar when stderr is not a terminal.
    assert len(re.findall(r"wrote gen_\S+_seed\d\.wav", proc.stdout + proc.stderr)) == 3
    assert "file/s" not in proc.stdout + proc.stderr and "%|" not in proc.stdout + proc.stderr
    assert "sda: 3 done / 0 skipped / 0 failed in 1 job" in summary_line(proc.stdout + proc.stderr)


@pytest.mark.slow
def test_dual_seed_at_96khz_gives_one_two_channel_96khz_file(tmp_path):
    proc = sda_run("stereo=dual_seed", "export.sample_rate=96000", "duration_s=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    run_dir = only_folder(only_folder(tmp_path / "outputs"))
    [record] = sidecars(run_dir)
    audio, rate = sf.read(str(run_dir / record["file"]["name"]), always_2d=True)
    assert rate == 96000 and audio.shape == (96000, 2)
    assert record["seeds"]["right"] not in (None, record["seeds"]["left"])
    assert not np.allclose(audio[:, 0], audio[:, 1])
    assert 20 * np.log10(np.abs(audio).max()) == pytest.approx(-1.0, abs=0.05)


@pytest.mark.slow
def test_multirun_makes_one_job_folder_per_point_and_one_summary(tmp_path):
    proc = sda_run("-m", "seed=range(0,2)", "chunking=crossfade,latent_interp", "duration_s=0.5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    sweep = only_folder(only_folder(tmp_path / "outputs" / "multirun"))
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    points = set()
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        [record] = sidecars(job)
        assert f"seed={record['seed']}" in overrides
        assert f"chunking={record['config']['chunking']['mode']}" in overrides
        assert sf.info(str(job / record["file"]["name"])).frames == 24000
        points.add((record["seed"], record["config"]["chunking"]["mode"]))
    assert points == {(s, c) for s in (0, 1) for c in ("crossfade", "latent_interp")}
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["jobs"], summary["done"], summary["skipped"], summary["failed"], summary["ok"]) == (
        4,
        4,
        0,
        0,
        True,
    )
    assert "sda: 4 done / 0 skipped / 0 failed in 4 jobs" in summary_line(proc.stdout + proc.stderr)


def test_model_is_loaded_once_for_all_jobs_of_a_process_and_outputs_go_where_told(
    tmp_path, monkeypatch, caplog, capsys
):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loads = []  # every real checkpoint load of this process from here on
    real_load = sda.runner.load_model
    monkeypatch.setattr(sda.runner, "load_model", lambda *args: loads.append(args) or real_load(*args))
    sda.runner._load_cached.cache_clear()
    caplog.set_level(logging.INFO, logger="sda.run")
    first = run_job(compose_run("duration_s=0.5", "seed=1"), tmp_path / "a", base_dir=REPO, show_progress=True)
    progress = capsys.readouterr().err
    second = run_job(compose_run("duration_s=0.5", "seed=2", "chunking=latent_interp"), tmp_path / "b", base_dir=REPO)

    assert len(loads) == 1, "one load for every job of a process"
    assert get_model("default", torch.device("cpu"), REPO) is get_model("default", torch.device("cpu"), REPO)
    assert len(loads) == 1
    assert first.summary() == second.summary() == "1 done, 0 skipped, 0 failed"
    assert [r["seed"] for r in sidecars(tmp_path / "a")] == [1]
    assert [r["config"]["chunking"]["mode"] for r in sidecars(tmp_path / "b")] == ["latent_interp"]
    assert list(elsewhere.iterdir()) == []  # nothing relative to the working folder
    # Progress: a bar over the items when asked for (on a terminal), one log line per file.
    assert "1/1" in progress and "file" in progress
    assert len([r for r in caplog.records if r.getMessage().startswith("wrote gen_")]) == 2


def test_override_text_round_trips_through_hydra():
    assert override_text("duration_s", 0.5) == "duration_s=0.5"
    assert override_text("chunking", "latent_interp") == "chunking=latent_interp"
    assert override_text("model.checkpoint", "/a b/it's.pt") == "model.checkpoint='/a b/it\\'s.pt'"
    assert override_text("model.checkpoint", "1.5") == "model.checkpoint='1.5'"
    config = compose_run(override_text("model.checkpoint", "/a b/it's.pt"), override_text("model.checkpoint", "1.5"))
    assert config.model.checkpoint == "1.5"


def test_reproduce_overrides_carry_the_sidecar_and_let_the_command_line_win():
    original = compose_run(
        "stereo=mid_side", "stereo.width=0.5", "chunking=latent_interp", "duration_s=3", "seed=40", "count=5"
    )
    record = {"seed": 42, "config": original.generation_fields()}

    again = compose_run(*reproduce_overrides(record, []))
    assert (again.seed, again.count) == (42, 1)
    assert again.generation_fields() | {"seed": 40, "count": 5} == original.generation_fields()

    changed = compose_run(
        *reproduce_overrides(record, ["duration_s=2", "export.sample_rate=96000", "stereo=dual_seed"])
    )
    assert (changed.duration_s, changed.export.sample_rate, changed.seed) == (2.0, 96000, 42)
    assert changed.stereo.mode == "dual_seed"  # the whole group replaced: mid_side's width is gone
    assert changed.chunking == original.chunking


@pytest.mark.slow
def test_the_process_ends_at_once_with_every_line_flushed_and_its_status(tmp_path):
    # `python -m sda.run` leaves with os._exit (sda.entry.exit_now): buffered output (a pipe or a
    # file, no PYTHONUNBUFFERED) and Hydra's run log must still be complete, the status kept.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | ONE_THREAD
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        ok = subprocess.run(
            [sys.executable, "-m", "sda.run", "duration_s=0.5", "count=2", "hydra.run.dir=run"],
            cwd=tmp_path,
            stdout=out,
            stderr=err,
            env=env,
            timeout=300,
        )
    output = (tmp_path / "out.txt").read_text() + (tmp_path / "err.txt").read_text()
    assert ok.returncode == 0, output
    assert "sda: 2 done / 0 skipped / 0 failed in 1 job" in summary_line(output)
    (log_file,) = (tmp_path / "run").glob("*.log")
    assert summary_line(log_file.read_text()) == summary_line(output)

    refused = subprocess.run(
        [sys.executable, "-m", "sda.run", "count=0", "hydra.run.dir=run2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert refused.returncode == 2 and refused.stderr.startswith("error: count=0"), refused.stderr


@pytest.mark.slow
def test_a_profiled_run_still_writes_its_profile(tmp_path):
    # The quick exit steps aside when a profiler watches: cProfile writes after main returns.
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", "run.prof", "-m", "sda.run", "duration_s=0.5", "hydra.run.dir=run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **ONE_THREAD},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    stats = pstats.Stats(str(tmp_path / "run.prof"))
    assert any(name == "generate_batch" for _, _, name in stats.stats), "the job's own calls are in the profile"
