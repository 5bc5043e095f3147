"""Files from elsewhere never steer the runner: a sidecar given to `reproduce=` and a folder given
to `resume=` can set generation settings and nothing else, and a crafted one is refused in one
line before anything is written or imported.

The crafted files below are the ones a hostile sidecar or folder would hold: a log file moved
outside the output folder, a callback that imports a module, a run folder moved elsewhere, a
launcher with a shell command in a parameter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sda.dsp.spectrogram import SpectrogramSettings
from sda.errors import ConfigError
from sda.files import file_sha256
from sda.model import MelVAE, ModelHyperparameters, save_checkpoint
from sda.numerics import GPU_VS_CPU, numerics_status
from sda.replay import COMMAND_FILE, reproduce_overrides, reproduction_promise, resume_command
from sda.run import main as run_main
from tests.helpers import compose_run, sda_run

pytestmark = pytest.mark.usefixtures("one_thread")


def sidecar_record(config: dict, seed: int = 3, version: int = 2) -> dict:
    return {"sidecar_format_version": version, "seed": seed, "config": config, "identity": "0" * 16}


def good_config() -> dict:
    return compose_run("duration_s=0.5", "stereo=mid_side", "stereo.width=0.5").generation_fields()


def evil_module(folder: Path) -> Path:
    """A module that leaves a marker if anything imports it."""
    marker = folder / "imported.txt"
    (folder / "evil_hook.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nclass Hook: pass\n")
    return marker


@pytest.mark.parametrize(
    "crafted, named",
    [
        ({"hydra": {"job_logging": {"handlers": {"file": {"filename": "LOG"}}}}}, "hydra"),
        ({"hydra": {"callbacks": {"x": {"_target_": "evil_hook.Hook"}}}}, "hydra"),
        ({"hydra": {"run": {"dir": "ELSEWHERE"}}}, "hydra"),
        ({"stereo": {"mode": "mid_side", "_target_": "evil_hook.Hook"}}, "stereo._target_"),
        ({"chunking": {"mode": "os.system"}}, "chunking.mode"),
        ({"phase": {"iterations": 8, "defaults": ["x"]}}, "phase.defaults"),
        ({"model": {"checkpoint": {"nested": "dict"}}}, "model.checkpoint"),
        ({"source": {"mode": "prior", "_target_": "evil_hook.Hook"}}, "source._target_"),
        ({"source": {"mode": "file", "path": "a.wav", "hydra": {"run": "x"}}}, "source.hydra"),
        ({"source": {"mode": "morph", "paths": ["a.wav", {"_target_": "evil_hook.Hook"}]}}, "source.paths"),
        ({"source": {"mode": "microphone"}}, "source.mode"),
        ({"quality": {"min_novelty": 1.0, "defaults": ["x"]}}, "quality.defaults"),
    ],
)
def test_reproduce_refuses_any_key_but_generation_settings_in_one_line(tmp_path, monkeypatch, capsys, crafted, named):
    marker = evil_module(tmp_path)
    config = good_config()
    for key, value in crafted.items():
        config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
    config = json.loads(json.dumps(config).replace("LOG", str(tmp_path / "log.txt")))
    config = json.loads(json.dumps(config).replace("ELSEWHERE", str(tmp_path / "elsewhere")))
    sidecar = tmp_path / "shared.json"
    sidecar.write_text(json.dumps(sidecar_record(config)))

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the hook would be importable
    with pytest.raises(SystemExit) as exit_info:
        run_main([f"reproduce={sidecar}", "hydra.run.dir=mine"])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: reproduce={str(sidecar)!r} is not allowed: ") and named in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil_hook.py", "shared.json"]
    assert not marker.exists()


def test_a_crafted_sidecar_is_refused_by_the_real_command(tmp_path):
    config = good_config()
    config["hydra"] = {"job_logging": {"handlers": {"file": {"filename": str(tmp_path / "log.txt")}}}}
    sidecar = tmp_path / "shared.json"
    sidecar.write_text(json.dumps(sidecar_record(config)))
    proc = sda_run(f"reproduce={sidecar}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: reproduce={str(sidecar)!r} is not allowed: 'hydra' is not a generation setting (refused)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]


def test_reproduce_takes_exactly_the_recorded_generation_settings():
    original = compose_run("seed=40", "count=5", "duration_s=3", "stereo=mid_side", "stereo.width=0.5")
    record = sidecar_record(original.generation_fields(), seed=42)
    again = compose_run(*reproduce_overrides(record, []))
    assert (again.seed, again.count) == (42, 1)
    assert again.generation_fields() | {"seed": 40, "count": 5} == original.generation_fields()


def test_a_sidecar_of_format_1_reproduces_with_the_keys_its_option_has():
    # Format 1 wrote every field of a group whatever the option; those never changed the audio.
    config = compose_run("duration_s=2", "export=ogg").generation_fields()
    config["stereo"] = {"mode": "mono", "width": 1.0, "haas_ms": 12.0}
    config["chunking"] = {"mode": "crossfade", "chunk_s": 0.5, "overlap_ms": 50.0, "anchor_interval_s": 2.0}
    config["export"] = {"format": "ogg", "sample_rate": 44100, "bit_depth": 16, "ogg_quality": 0.4}
    again = compose_run(*reproduce_overrides(sidecar_record(config, version=1), []))
    assert again.stereo.mode == "mono" and again.chunking.chunk_s == 0.5
    assert (again.export.format, again.export.sample_rate, again.export.quality) == ("ogg", 44100, 0.4)


def recorded(folder: Path, **changes) -> Path:
    command = {
        "format_version": 1,
        "multirun": False,
        "overrides": ["duration_s=0.5", "count=1"],
        "launcher": {"name": "basic", "parameters": {}},
    }
    command.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / COMMAND_FILE).write_text(json.dumps(command))
    return folder


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"overrides": ["duration_s=0.5", "hydra.job_logging.handlers.file.filename=/tmp/x"]}, "hydra.job_logging"),
        ({"overrides": ["hydra.run.dir=/tmp/elsewhere"]}, "hydra.run.dir"),
        ({"overrides": ["+hydra.callbacks.x._target_=evil_hook.Hook"]}, "hydra.callbacks"),
        ({"overrides": ["hydra/launcher=joblib"]}, "hydra/launcher"),
        ({"overrides": ["+foo=1"]}, "foo"),
        ({"launcher": {"name": "evil_hook", "parameters": {}}}, "evil_hook"),
        ({"launcher": {"name": "submitit_slurm", "parameters": {"setup": ["rm -rf ~"]}}}, "setup"),
        ({"launcher": {"name": "submitit_slurm", "parameters": {"partition": "gpu\nrm -rf ~"}}}, "partition"),
        ({"config_name": "evil", "config_dir": "/tmp"}, "config_dir"),
    ],
)
def test_resume_refuses_anything_sda_does_not_record_in_one_line(tmp_path, changes, named):
    folder = recorded(tmp_path / "crafted", **changes)
    with pytest.raises(ConfigError) as info:
        resume_command(folder, [])
    assert named in str(info.value) and "\n" not in str(info.value)


def test_resume_never_reads_hydras_files_from_the_folder(tmp_path, monkeypatch, capsys):
    marker = evil_module(tmp_path)
    folder = tmp_path / "old"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  job: {config_name: evil}\n  callbacks: {x: {_target_: evil_hook.Hook}}\n"
        "  overrides: {hydra: [hydra.job_logging.handlers.file.filename=log.txt], task: [duration_s=0.5]}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        run_main(["resume=old"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: resume='old' is not allowed: a run or sweep folder made by sda.run (no {COMMAND_FILE} in it)"
    ]
    assert not marker.exists() and not (tmp_path / "log.txt").exists()
    assert sorted(p.name for p in folder.iterdir()) == [".hydra"]


def test_resume_replays_the_record_into_its_folder_and_later_overrides_win(tmp_path):
    folder = recorded(tmp_path / "run", overrides=["duration_s=0.5", "count=2", "stereo=mid_side", "stereo.width=0.5"])
    command = resume_command(folder, ["stereo.width=1.0", "seed=7"])
    assert command[0] == f"hydra.run.dir={folder.absolute()}"
    config = compose_run(*command[1:])
    assert (config.duration_s, config.count, config.stereo.width, config.seed) == (0.5, 2, 1.0, 7)


def test_reproduce_says_in_one_line_what_it_promises_for_the_device_that_made_the_original():
    made_on_gpu = {"numerics": {"device_kind": "cuda", "gpu": "NVIDIA H200", "pinned": True}}
    line = reproduction_promise(made_on_gpu, "cpu")
    assert line.startswith("the original was made on NVIDIA H200, this run on cpu: expect the same sound, not the same")
    assert str(GPU_VS_CPU) in line and "\n" not in line
    made_on_cpu = {"numerics": numerics_status("cpu")}
    assert reproduction_promise(made_on_cpu, "cpu").endswith("expect the same bytes")
    # a render made before numerics were recorded promises no more than another device does
    assert str(GPU_VS_CPU) in reproduction_promise({}, "cpu")


def _tiny_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    vae = MelVAE(SpectrogramSettings(), ModelHyperparameters(latent_dim=4, channels=(8, 8, 8)))
    return save_checkpoint(vae, {"note": f"tiny, seed {seed}"}, path, replace=True)


def test_resume_refuses_a_model_that_changed_since_the_run_started(tmp_path):
    # A sweep of `default` resumed after an upgrade retrained the shipped model (or after a user
    # retrained theirs) would finish with another model's outputs beside the first's.
    model = _tiny_checkpoint(tmp_path / "models" / "mine.pt", seed=0)
    first = file_sha256(model)
    run = tmp_path / "run"
    done = sda_run("model.checkpoint=mine", "count=2", "duration_s=0.5", f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / COMMAND_FILE).read_text())["models"] == [{"checkpoint": "mine", "sha256": first}]
    written = sorted(p.name for p in run.glob("gen_*"))
    assert len(written) == 4

    _tiny_checkpoint(model, seed=1)  # retrained under the same name
    refused = sda_run(f"resume={run}", cwd=tmp_path)
    assert refused.returncode != 0
    [line] = [text for text in refused.stderr.splitlines() if text.startswith("error:")]
    assert "its model 'mine'" in line and f"sha256 {first[:12]}..., now {file_sha256(model)[:12]}..." in line
    assert sorted(p.name for p in run.glob("gen_*")) == written  # nothing made, nothing removed
    # naming the model on the command line chooses it
    assert any(text == "model.checkpoint=mine" for text in resume_command(run, ["model.checkpoint=mine"]))
    model.unlink()
    with pytest.raises(ConfigError, match="its model 'mine' is missing"):
        resume_command(run, [])


def test_a_folder_recorded_before_models_were_still_resumes(tmp_path):
    run = tmp_path / "run"
    done = sda_run("count=1", "duration_s=0.5", f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    command = json.loads((run / COMMAND_FILE).read_text())
    del command["models"]
    (run / COMMAND_FILE).write_text(json.dumps(command))
    assert any(text.startswith("hydra.run.dir=") for text in resume_command(run, []))
