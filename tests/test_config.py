"""Composing and validating configs: every bad value is one line naming key, value, allowed."""

from __future__ import annotations

import dataclasses

import pytest

from sda.cli import compose_config, plan, split_sweep
from sda.config import (
    ChunkingMode,
    ExportConfig,
    GenerationConfig,
    RunConfig,
    StereoMode,
    TrainConfig,
    run_config_from_dict,
    to_run_config,
    to_train_config,
    with_seed,
)
from sda.errors import ConfigError
from tests.helpers import compose_run


def test_defaults_compose_into_a_sealed_generation_config():
    cfg = compose_run()
    assert isinstance(cfg, GenerationConfig)
    assert (cfg.chunking.mode, cfg.stereo.mode, cfg.export.format.value) == (
        ChunkingMode.crossfade,
        StereoMode.mono,
        "wav",
    )
    assert (cfg.export.sample_rate, cfg.export.bit_depth) == (48000, 24)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.export.sample_rate = 96000  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides, check",
    [
        (
            ["stereo=dual_seed", "export.sample_rate=96000"],
            lambda c: c.stereo.mode == StereoMode.dual_seed and c.export.sample_rate == 96000,
        ),
        (["chunking=latent_interp"], lambda c: c.chunking.mode == ChunkingMode.latent_interp),
        (["export=flac", "export.bit_depth=16"], lambda c: (c.export.format.value, c.export.bit_depth) == ("flac", 16)),
        (["export=ogg"], lambda c: c.export.format.value == "ogg"),
        (["stereo=mid_side", "stereo.width=1.5"], lambda c: c.stereo.width == 1.5),
        (["seed=4294967295"], lambda c: c.seed == 2**32 - 1),
        (["duration_s=600"], lambda c: c.duration_s == 600.0),
    ],
)
def test_valid_overrides_compose(overrides, check):
    assert check(compose_run(*overrides))


@pytest.mark.parametrize(
    "overrides, key, value, allowed",
    [
        (["+foo=1"], "foo", "1", "unknown key; keys at the top level: batch_size, chunking, count"),
        (
            ["+export.foo=1"],
            "export.foo",
            "1",
            "unknown key; keys in export: bit_depth, format, ogg_quality, sample_rate",
        ),
        (["+stereo.extra=2"], "stereo.extra", "2", "unknown key; keys in stereo: haas_ms, mode, width"),
        (["foo=1"], "foo", "1", "unknown key"),
        (["duration_s=abc"], "duration_s", "abc", "expected a float"),
        (["seed=1.5"], "seed", "1.5", "expected an integer"),
        (["duration_s=0"], "duration_s", "0.0", "(0, 600]"),
        (["duration_s=600.5"], "duration_s", "600.5", "(0, 600]"),
        (["duration_s=601"], "duration_s", "601.0", "(0, 600]"),
        (["export.bit_depth=20"], "export.bit_depth", "20", "wav allows 16, 24, 32"),
        (["chunking=nope"], "chunking", "nope", "choose one of crossfade, latent_interp"),
        (["stereo.width=2"], "stereo.width", "2.0", "[0, 1.5]"),
        (["reproduce=/no/such/sidecar.json"], "reproduce", "/no/such/sidecar.json", "sidecar .json (file not found)"),
        (["export.sample_rate=22050"], "export.sample_rate", "22050", "44100, 48000, 96000"),
        (["export.bit_depth=8"], "export.bit_depth", "8", "16, 24, 32"),
        (["export=flac", "export.bit_depth=32"], "export.bit_depth", "32", "flac allows 16, 24"),
        (["chunking.mode=granular"], "chunking.mode", "granular", "crossfade, latent_interp"),
        (["chunking=granular"], "chunking", "granular", "crossfade, latent_interp"),
        (["stereo.mode=surround"], "stereo.mode", "surround", "mono, mid_side, dual_seed"),
        (["stereo=surround"], "stereo", "surround", "dual_seed, mid_side, mono"),
        (["stereo.width=1.6"], "stereo.width", "1.6", "[0, 1.5]"),
        (["stereo.width=-0.1"], "stereo.width", "-0.1", "[0, 1.5]"),
        (["seed=-1"], "seed", "-1", "[0, 4294967295]"),
        (["seed=4294967296"], "seed", "4294967296", "[0, 4294967295]"),
        (["count=0"], "count", "0", ">= 1"),
        (["seed=4294967295", "count=2"], "count", "2", "seed + count - 1"),
        (["chunking.overlap_ms=600"], "chunking.overlap_ms", "600.0", "at most half of chunking.chunk_s"),
    ],
)
def test_bad_values_fail_with_one_line_naming_key_value_and_allowed(overrides, key, value, allowed):
    with pytest.raises(ConfigError) as info:
        compose_run(*overrides)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key}=")
    assert value in message
    assert allowed in message
    assert info.value.exit_code == 2


def test_config_from_a_plain_dict_is_validated_the_same_way():
    data = compose_run("stereo=dual_seed").generation_fields()
    assert run_config_from_dict(data).stereo.mode == StereoMode.dual_seed
    data["export"]["sample_rate"] = 22050
    with pytest.raises(ConfigError, match="export.sample_rate=22050"):
        run_config_from_dict(data)


def test_python_api_config_validates_without_hydra():
    assert GenerationConfig(duration_s=5.0).duration_s == 5.0
    with pytest.raises(ConfigError, match="export.bit_depth=20"):
        GenerationConfig(export=ExportConfig(bit_depth=20))


def test_sweep_points_are_expanded_like_hydra_does():
    points = split_sweep(["seed=range(0,3)", "chunking=crossfade,latent_interp", "duration_s=2"])
    assert len(points) == 6
    assert ["seed=0", "chunking=crossfade", "duration_s=2"] in points
    assert ["seed=2", "chunking=latent_interp", "duration_s=2"] in points


def test_preflight_validates_every_sweep_point_before_anything_runs():
    overrides = ["seed=range(0,2000)", "export.sample_rate=44100,48000,4800"]
    with pytest.raises(ConfigError, match=r"export.sample_rate=4800 is not allowed"):
        plan("config", overrides, True, RunConfig, to_run_config, fast_keys={"seed": with_seed})
    configs = plan(
        "config",
        ["seed=range(0,2000)", "chunking=crossfade,latent_interp"],
        True,
        RunConfig,
        to_run_config,
        fast_keys={"seed": with_seed},
    ).configs
    assert len(configs) == 4000
    assert {c.seed for c in configs} == set(range(2000))
    with pytest.raises(ConfigError, match=r"seed=-1"):
        plan("config", ["seed=5,-1"], True, RunConfig, to_run_config, fast_keys={"seed": with_seed})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset=demo"], "name is required"),
        (["name=x"], "dataset.path is required"),
        (["dataset=demo", "name=../x"], "name='../x' is not allowed"),
        (["dataset=demo", "name=x", "spectrogram.sample_rate=44100"], "spectrogram.sample_rate=44100 is not allowed"),
        (["dataset=demo", "name=x", "augmentation.gain_db=30"], "augmentation.gain_db=30.0 is not allowed"),
        (["dataset=demo", "name=x", "+augmentation.mixup=1"], "augmentation.mixup=1 is not allowed: unknown key"),
    ],
)
def test_training_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        to_train_config(compose_config("train", overrides, TrainConfig))
    assert message in str(info.value) and "\n" not in str(info.value)
