"""`python -m sda.run` with sources: every source file of every sweep point is read and checked
before anything is made (one line naming the file), a real `-m source.spread=...` sweep records
each file's sha256, and `resume=` and `reproduce=` refuse in one line a source file that is gone
or changed."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sda.config import OPTIONS, FileSource, GenerationConfig, MorphSource, QualityConfig
from sda.dsp.spectrogram import SpectrogramSettings
from sda.errors import ConfigError
from sda.files import file_sha256
from sda.model import MelVAE, ModelHyperparameters, checkpoint_record
from sda.replay import COMMAND_FILE, generation_overrides, reproduce_overrides, resume_command
from sda.run import main as run_main
from sda.sources import preflight_sources
from tests.helpers import compose_run, sda_run

SR = 48000

pytestmark = pytest.mark.usefixtures("one_thread")


def tone(path: Path, seconds: float, level: float = 0.5, sample_rate: int = SR, freq: float = 330.0) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(
        path,
        (level * np.sin(2 * math.pi * freq * t) * np.exp(-t)).astype(np.float32),
        sample_rate,
        "FLOAT" if path.suffix == ".wav" else None,
    )
    return path


def run_error(argv: list[str], capsys) -> str:
    """The one line `sda.run` fails with (exit status 2), before any folder is made."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(argv)
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    return line


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda folder: folder / "nowhere.wav", "an existing audio file (not found)"),
        (lambda folder: _text(folder / "notes.wav"), "usable audio, but it is not readable as audio"),
        (lambda folder: tone(folder / "silent.wav", 2.0, level=0.0), "silent: peak digital silence"),
        (lambda folder: tone(folder / "quiet.wav", 2.0, level=1e-4), "silent: peak -80.0 dBFS"),
        (lambda folder: tone(folder / "short.wav", 0.4), "0.4 s is shorter than the model's 1 s"),
    ],
)
def test_an_unusable_source_file_is_named_in_one_line(tmp_path, make, why):
    good, bad = tone(tmp_path / "good.wav", 2.0), make(tmp_path)
    configs = [GenerationConfig(source=FileSource(path=str(path))) for path in (good, bad)]
    with pytest.raises(ConfigError) as info:
        preflight_sources(configs, tmp_path)
    assert str(info.value).startswith(f"source.path={str(bad)!r} is not allowed: ") and why in str(info.value)
    morph = GenerationConfig(source=MorphSource(paths=(str(good), str(bad))))
    with pytest.raises(ConfigError, match=f"^source.paths={str(bad)!r} is not allowed: .*{re.escape(why)}"):
        preflight_sources([morph], tmp_path)


def test_every_source_file_of_every_sweep_point_is_checked_before_any_folder_is_made(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    good, short = tone(tmp_path / "good.wav", 2.0), tone(tmp_path / "short.wav", 0.4)
    # the bad file is only in the second point of the sweep
    line = run_error(["-m", "source=file", f"source.path={good},{short}", "duration_s=0.5"], capsys)
    assert line == (
        f"error: source.path={str(short)!r} is not allowed: an audio file at least one model window long "
        "(0.4 s is shorter than the model's 1 s)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.wav", "short.wav"], "nothing made"


def _text(path: Path) -> Path:
    path.write_text("not audio at all\n" * 100)
    return path


def test_corpus_source_needs_a_model_that_keeps_its_training_windows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    record = checkpoint_record(
        MelVAE(SpectrogramSettings(), ModelHyperparameters(latent_dim=8, channels=(4, 8, 8))), {}
    )
    record["format_version"] = 1
    del record["training_summary"]
    torch.save(record, tmp_path / "old.pt")
    line = run_error(["source=corpus", "model.checkpoint=old.pt", "duration_s=0.5"], capsys)
    assert line == (
        "error: source='corpus' is not allowed: a model that keeps its training windows (checkpoint format 2); "
        "model 'old' has none: retrain it with this sda"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pt"]


def test_source_settings_round_trip_through_the_recorded_overrides(tmp_path):
    odd = tone(tmp_path / "it's, [odd] \\name.wav", 1.5)
    other = tone(tmp_path / "other.flac", 1.5, freq=220.0)
    config = GenerationConfig(
        source=MorphSource(paths=(str(odd), str(other)), spread=0.3), quality=QualityConfig(reject_copies=True)
    )
    again = compose_run(*generation_overrides(config.generation_fields(), ("reproduce", "x.json")))
    assert again.generation_fields() == config.generation_fields()
    assert again.source.paths == (str(odd), str(other))
    for name in OPTIONS["source"]:
        assert compose_run(f"source={name}", *_required(name, other)).source.mode == name


def _required(name: str, path: Path) -> list[str]:
    return {"file": [f"source.path={path}"], "morph": [f"source.paths=[{path},{path}]"]}.get(name, [])


@pytest.mark.slow
def test_a_spread_sweep_records_its_source_and_resume_and_reproduce_refuse_a_changed_file(tmp_path, capsys):
    source = tone(tmp_path / "take.wav", 2.0)
    sha = file_sha256(source)
    sweep = tmp_path / "sweep"
    proc = sda_run(
        "-m",
        "source=file",
        f"source.path={source}",
        "source.spread=0,0.5",
        "duration_s=1",
        "phase.iterations=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/gen_*.json"))]
    assert [r["config"]["source"]["spread"] for r in records] == [0.0, 0.5]
    for record in records:
        assert record["source"] == {"mode": "file", "files": [{"path": str(source), "sha256": sha}]}
        assert record["identity_parameters"]["source"]["sha256"] == [sha]
        assert str(source) not in json.dumps(record["identity_parameters"])
    assert len({r["identity"] for r in records}) == 2
    command = json.loads((sweep / COMMAND_FILE).read_text())
    assert command["source_files"] == [{"path": str(source), "sha256": sha}]
    assert "source.spread=0,0.5" in command["overrides"]

    # the file changes: neither resume nor reproduce make something else under the old name
    tone(source, 2.0, freq=440.0)
    with pytest.raises(Exception) as info:
        resume_command(sweep, [])
    assert f"its source file {str(source)!r} changed since the run started" in str(info.value)
    sidecar = next(sweep.glob("0/gen_*.json"))
    line = run_error([f"reproduce={sidecar}"], capsys)
    assert line.startswith(f"error: reproduce={str(sidecar)!r} is not allowed: its source file {str(source)!r} changed")
    # choosing another source on the command line reproduces the rest of the settings
    other = tone(tmp_path / "other.wav", 2.0)
    record = json.loads(sidecar.read_text())
    overrides = reproduce_overrides(record, [f"source.path={other}"], str(sidecar))
    assert compose_run(*overrides).source.path == str(other)
    source.unlink()
    with pytest.raises(Exception, match=f"its source file {str(source)!r} is missing"):
        resume_command(sweep, [])
