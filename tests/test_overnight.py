"""Running overnight: a killed run resumes to exactly the files of an uninterrupted one, a failing
item is recorded and the rest written, every sweep point and the disk are checked before the first
job, the named `overnight` job composes and runs, the joblib and submitit launchers give the same
folders, and `reproduce=` makes an output again bit for bit.

Commands run for real in subprocesses (working folder `tmp_path`); references are made in-process
with `run_job`. Audio is compared by identity and sha256 from the sidecars (names carry times)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sda.config import RunConfig, to_run_config
from sda.dsp.spectrogram import SpectrogramSettings
from sda.errors import OutputError
from sda.files import file_sha256
from sda.model import MelVAE, ModelHyperparameters, load_model, save_checkpoint
from sda.outputs import verify_output
from sda.preflight import plan
from sda.replay import recorded_command, resume_command, write_command
from sda.run import preflight
from sda.runner import check_output_folder, estimate_output_bytes, run_job
from sda.seeds import sample_latents
from tests.helpers import ONE_THREAD, REPO, compose_run, outputs_by_identity, sda_run, summary_line

JOBS = REPO / "jobs"

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Resume


@pytest.mark.slow
@pytest.mark.determinism
def test_killed_run_resumes_to_the_files_of_an_uninterrupted_run(tmp_path):
    # Batches of three: the kill lands inside a batch, and the rerun makes only its missing items,
    # which must come out as they did inside the uninterrupted run's batch.
    settings = ["count=8", "batch_size=3", "duration_s=0.5"]
    reference = run_job(compose_run(*settings), tmp_path / "reference", base_dir=REPO)
    assert reference.count("done") == 8

    job = tmp_path / "job"
    command = [sys.executable, "-m", "sda.run", *settings, f"hydra.run.dir={job}"]
    environment = {**os.environ, **ONE_THREAD}
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(list(job.glob("gen_*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed partway"
    complete = [s for s in job.glob("gen_*.json") if verify_output(s).ok]
    assert 1 <= len(complete) < 8 and not (job / "outcome.json").exists()

    # What a kill can leave, made certain: a temporary file, and a sidecar whose audio was never
    # written (sda writes the sidecar first).
    stale = job / ".gen_20260101T000000Z_seed9.wav.4242.tmp"
    stale.write_bytes(b"RIFF half a file")
    orphan = complete[0]
    (job / json.loads(orphan.read_text())["file"]["name"]).unlink()

    rerun = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    skipped = len(complete) - 1
    assert f"sda: {8 - skipped} done / {skipped} skipped / 0 failed" in summary_line(rerun.stdout + rerun.stderr)
    assert not list(job.glob("*.tmp")) and not list(job.glob(".*.tmp"))
    assert not orphan.exists()
    assert outputs_by_identity(job) == outputs_by_identity(tmp_path / "reference")
    assert len(list(job.glob("gen_*"))) == 16  # eight audio files and eight sidecars, nothing else
    assert all(verify_output(s).ok for s in job.glob("gen_*.json"))

    # resume=PATH replays the command sda recorded into the same folder; later overrides win.
    replayed = resume_command(job, ["device=cpu"])
    assert replayed[0] == f"hydra.run.dir={job.absolute()}"
    assert compose_run(*replayed[1:]).generation_fields() == compose_run(*settings, "device=cpu").generation_fields()


def test_resume_of_a_named_sweep_replays_its_values_without_its_config_name_or_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "night"
    argv = ["--config-dir", str(JOBS), "--config-name", "overnight", f"hydra.sweep.dir={sweep}", "count=2"]
    argv += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    found, _ = preflight(argv)
    sweep.mkdir()
    write_command(sweep, recorded_command(found))
    replayed = resume_command(sweep, ["duration_s=0.5"])
    assert replayed[:4] == ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    assert not any(token.startswith("--config") for token in replayed)
    again = plan("config", replayed[4:], RunConfig, to_run_config, multirun=True)
    originals = [dataclasses.replace(c, duration_s=0.5) for c in found.configs()]
    assert list(again.configs()) == originals  # the named job's 96 kHz dual_seed values, every point


# --------------------------------------------------------------------------------------------
# Failure isolation


BROKEN_COORDINATE = 14  # a latent coordinate positive for seed 3 and negative for seeds 4 and 5


@pytest.fixture(scope="module")
def half_broken_checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained model whose decoder overflows (so the audio is non-finite) exactly for
    latents whose coordinate BROKEN_COORDINATE is positive: a real failure that only some seeds hit."""
    torch.manual_seed(0)
    vae = MelVAE(SpectrogramSettings(), ModelHyperparameters(latent_dim=8, channels=(4, 8, 8)))
    with torch.no_grad():
        vae.prior_scale.zero_()
        vae.prior_scale[:, BROKEN_COORDINATE] = 1.0  # every latent-grid value is that coordinate
        vae.from_latent.weight[:, 0] = 1e15
        vae.decoder[0].weight.abs_()  # the huge value keeps its sign into the first SiLU
    return save_checkpoint(
        vae, {"note": f"non-finite for z[{BROKEN_COORDINATE}] > 0"}, tmp_path_factory.mktemp("models") / "half.pt"
    )


def test_failing_item_is_recorded_and_the_rest_of_its_batch_written(tmp_path, half_broken_checkpoint):
    size = load_model(half_broken_checkpoint).latent_dim
    coordinate = {seed: sample_latents(seed, 1, size)[0, BROKEN_COORDINATE].item() for seed in (3, 4, 5)}
    assert coordinate[3] > 0 > max(coordinate[4], coordinate[5])
    config = compose_run(
        f"model.checkpoint={half_broken_checkpoint}", "seed=3", "count=3", "batch_size=3", "duration_s=0.5"
    )

    outcome = run_job(config, tmp_path / "job")

    by_seed = {item.seed: item for item in outcome.items}
    assert by_seed[3].status == "failed" and "non-finite" in by_seed[3].reason and by_seed[3].file is None
    assert by_seed[4].status == by_seed[5].status == "done"
    assert outcome.failed and outcome.error is None
    written = sorted(tmp_path.joinpath("job").glob("gen_*"))
    assert [p.name.split("_seed")[1] for p in written] == ["4.json", "4.wav", "5.json", "5.wav"]
    for path in written[1::2]:
        audio, _ = sf.read(str(path))
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.5
    recorded = json.loads((tmp_path / "job" / "outcome.json").read_text())
    assert recorded["counts"] == {"done": 2, "skipped": 0, "failed": 1, "rejected": 0}
    assert recorded["items"][0]["reason"] == "non-finite samples in the generated audio"


@pytest.mark.slow
def test_sweep_with_a_failing_item_runs_every_job_and_exits_1(tmp_path, half_broken_checkpoint):
    proc = sda_run(
        "-m",
        f"model.checkpoint={half_broken_checkpoint},default",
        "seed=3",
        "count=2",
        "batch_size=2",
        "duration_s=0.5",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr + proc.stdout
    assert "sda: 3 done / 0 skipped / 1 failed in 2 jobs" in summary_line(proc.stdout + proc.stderr)
    assert "seed 3 failed: non-finite samples" in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["ok"] is False and [j["counts"] for j in summary["job_outcomes"]] == [
        {"done": 1, "skipped": 0, "failed": 1, "rejected": 0},
        {"done": 2, "skipped": 0, "failed": 0, "rejected": 0},
    ]
    assert len(list((tmp_path / "sweep" / "0").glob("gen_*.wav"))) == 1
    assert len(list((tmp_path / "sweep" / "1").glob("gen_*.wav"))) == 2


# --------------------------------------------------------------------------------------------
# Pre-flight


@pytest.mark.slow
def test_bad_sweep_point_stops_the_sweep_before_its_first_job(tmp_path):
    proc = sda_run("-m", "export.sample_rate=48000,22050", "duration_s=0.5", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: export.sample_rate=22050 is not allowed: one of 44100, 48000, 96000"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_output_folder_that_cannot_be_made_is_one_line_before_anything_runs(tmp_path):
    (tmp_path / "taken").write_text("a file where the folder would go")
    proc = sda_run("duration_s=0.5", "hydra.run.dir=taken/run", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot create output folder taken/run: {tmp_path / 'taken'} is a file, not a folder"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    tmp_path.joinpath("ro").mkdir(mode=0o555)
    with pytest.raises(OutputError, match="is not writable"):
        check_output_folder(tmp_path / "ro" / "run")


def test_disk_space_is_checked_for_the_whole_sweep_not_one_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    heavy = ["duration_s=600", "stereo=dual_seed", "export.sample_rate=96000", "export.bit_depth=32"]
    per_output = estimate_output_bytes(compose_run(*heavy))
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    count = int(0.6 * free / per_output) + 1  # one job fits, two do not
    preflight([f"count={count}", *heavy])
    with pytest.raises(OutputError) as info:
        preflight(["-m", f"seed=0,{count}", f"count={count}", *heavy])
    assert str(info.value).startswith("not enough disk space for outputs/multirun/")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_outputs_already_in_the_folder_count_against_the_estimate(tmp_path):
    (tmp_path / "gen_x_seed0.wav").write_bytes(b"\0" * 1000)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    check_output_folder(tmp_path, free + 500)
    with pytest.raises(OutputError, match="not enough disk space"):
        check_output_folder(tmp_path, free + 10**9)
    # the report's pictures and the sidecars are not audio already made: they count for nothing
    (tmp_path / "spectrograms").mkdir()
    (tmp_path / "spectrograms" / "gen_x_seed0_abc.png").write_bytes(b"\0" * 10**6)
    (tmp_path / "gen_x_seed0.json").write_bytes(b"\0" * 10**6)
    with pytest.raises(OutputError, match="not enough disk space"):
        check_output_folder(tmp_path, free + 5000)


# --------------------------------------------------------------------------------------------
# The named overnight job


def test_overnight_job_composes_into_2000_distinct_outputs_in_a_folder_per_night(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = plan("overnight", [], RunConfig, to_run_config, config_dir=JOBS)
    assert found.multirun  # hydra.mode: MULTIRUN in the job, no -m needed
    assert found.output_dir == Path("outputs/jobs/overnight") / datetime.now().strftime("%Y-%m-%d")
    configs = list(found.configs())
    outputs = {(seed, c.chunking.mode) for c in configs for seed in c.seeds}
    assert len(outputs) == sum(c.count for c in configs) == 2000
    assert {c.chunking.mode for c in configs} == {"crossfade", "latent_interp"}
    for config in configs:
        assert config.stereo.mode == "dual_seed"
        assert (config.export.sample_rate, config.export.bit_depth, config.export.format) == (96000, 24, "wav")
    preflight(["--config-dir", str(JOBS), "--config-name", "overnight", "seed=0", "count=1"])


@pytest.mark.slow
def test_tiny_overnight_runs_from_its_script_then_resumes_from_its_folder(tmp_path):
    # The scheduled command, run from a copy of jobs/ so that its outputs land in tmp_path.
    shutil.copytree(JOBS, tmp_path / "jobs")
    environment = {**os.environ, **ONE_THREAD, "SDA_PYTHON": sys.executable}
    tiny = ["seed=0", "count=1", "duration_s=0.5"]
    proc = subprocess.run(
        [str(tmp_path / "jobs" / "overnight.sh"), *tiny], env=environment, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    night = tmp_path / "outputs" / "jobs" / "overnight" / (datetime.now() - timedelta(hours=12)).strftime("%Y-%m-%d")
    modes = set()
    for number in ("0", "1"):
        [sidecar] = (night / number).glob("gen_*.json")
        record = json.loads(sidecar.read_text())
        info = sf.info(str(night / number / record["file"]["name"]))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (96000, 2, "PCM_24", 48000)
        assert record["config"]["stereo"]["mode"] == "dual_seed"
        modes.add(record["config"]["chunking"]["mode"])
    assert modes == {"crossfade", "latent_interp"}
    assert "sda: 2 done / 0 skipped / 0 failed in 2 jobs" in summary_line(proc.stdout + proc.stderr)

    # resume= replays the command sda recorded in the folder (the named job's values included).
    again = sda_run(f"resume={night.relative_to(tmp_path)}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "sda: 0 done / 2 skipped / 0 failed in 2 jobs" in summary_line(again.stdout + again.stderr)


# --------------------------------------------------------------------------------------------
# Launchers


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_make_the_same_job_folders_and_summary(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    proc = sda_run(
        "-m", f"hydra/launcher={launcher}", "seed=0,1", "duration_s=0.5", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for number in (0, 1):
        [sidecar] = (sweep / str(number)).glob("gen_*.json")
        assert verify_output(sidecar).ok
        assert json.loads(sidecar.read_text())["seed"] == number
        assert json.loads((sweep / str(number) / "outcome.json").read_text())["counts"]["done"] == 1
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["jobs"], summary["done"], summary["ok"]) == (2, 2, True)
    assert "sda: 2 done / 0 skipped / 0 failed in 2 jobs" in summary_line(proc.stdout + proc.stderr)


# --------------------------------------------------------------------------------------------
# Reproduce


@pytest.mark.slow
@pytest.mark.determinism
def test_reproduce_makes_the_same_audio_bytes_and_takes_overrides(tmp_path, caplog):
    source = tmp_path / "source"
    # Made in a batch of three, reproduced alone: an item's audio must not depend on its batch.
    run_job(
        compose_run("seed=5", "count=3", "batch_size=3", "duration_s=0.5", "chunking=latent_interp", "stereo=mid_side"),
        source,
        base_dir=REPO,
    )
    [sidecar] = [p for p in source.glob("gen_*.json") if json.loads(p.read_text())["seed"] == 6]
    original = json.loads(sidecar.read_text())

    proc = sda_run(f"reproduce={sidecar}", "hydra.run.dir=again", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    [made] = [json.loads(p.read_text()) for p in (tmp_path / "again").glob("gen_*.json")]
    assert made["identity"] == original["identity"]
    assert (
        made["file"]["sha256"] == original["file"]["sha256"] == file_sha256(tmp_path / "again" / made["file"]["name"])
    )
    assert made["reproduced_from"]["identity"] == original["identity"]
    assert re.search(r"reproduced gen_\S+ exactly", proc.stdout + proc.stderr)

    proc = sda_run(
        f"reproduce={sidecar}", "duration_s=1", "export.sample_rate=96000", "hydra.run.dir=longer", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    [made] = [json.loads(p.read_text()) for p in (tmp_path / "longer").glob("gen_*.json")]
    info = sf.info(str(tmp_path / "longer" / made["file"]["name"]))
    assert (info.samplerate, info.frames, info.channels) == (96000, 96000, 2)
    assert made["seed"] == 6 and made["config"]["count"] == 1
    assert made["config"]["chunking"] == original["config"]["chunking"]
    assert made["config"]["stereo"] == original["config"]["stereo"]
    assert (
        "differs from gen_" in proc.stdout + proc.stderr
        and "in duration_s, export.sample_rate" in proc.stdout + proc.stderr
    )


def test_a_folder_another_process_is_writing_into_is_refused(tmp_path):
    import fcntl

    job = tmp_path / "job"
    job.mkdir()
    (job / "outcome.json").write_text('{"theirs": true}')
    with open(job / ".sda.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("4242")
        handle.flush()
        outcome = run_job(compose_run("duration_s=0.5"), job, base_dir=REPO)
    assert outcome.error == f"another sda process (pid 4242) is writing into {job}; let it finish or stop it first"
    assert outcome.items == [] and (job / "outcome.json").read_text() == '{"theirs": true}'
    assert sorted(p.name for p in job.iterdir()) == [".sda.lock", "outcome.json"]
