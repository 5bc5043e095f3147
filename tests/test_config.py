"""Composing and validating configs: every bad value is one line naming key, value, allowed."""

from __future__ import annotations

import dataclasses

import pytest

from sda.config import (
    CorpusSource,
    FileSource,
    GenerationConfig,
    LatentInterpChunking,
    MonoStereo,
    MorphSource,
    PriorSource,
    QualityConfig,
    RunConfig,
    TrainConfig,
    WavExport,
    run_config_from_dict,
    to_run_config,
    to_train_config,
)
from sda.errors import ConfigError
from sda.preflight import MAX_SWEEP_JOBS, compose_config, plan, split_sweep
from tests.helpers import compose_run


def test_defaults_compose_into_a_sealed_generation_config():
    cfg = compose_run()
    assert isinstance(cfg, GenerationConfig)
    assert (cfg.chunking.mode, cfg.stereo.mode, cfg.export.format) == ("crossfade", "mono", "wav")
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
            lambda c: c.stereo.mode == "dual_seed" and c.export.sample_rate == 96000,
        ),
        (["chunking=latent_interp"], lambda c: isinstance(c.chunking, LatentInterpChunking)),
        (["export=flac", "export.bit_depth=16"], lambda c: (c.export.format, c.export.bit_depth) == ("flac", 16)),
        (["export=ogg", "export.quality=0.3"], lambda c: (c.export.format, c.export.quality) == ("ogg", 0.3)),
        (["stereo=mid_side", "stereo.width=1.5"], lambda c: c.stereo.width == 1.5),
        (["seed=4294967295"], lambda c: c.seed == 2**32 - 1),
        (["duration_s=600"], lambda c: c.duration_s == 600.0),
        ([], lambda c: (c.source, c.quality) == (PriorSource(), QualityConfig(min_novelty=0.4, reject_copies=False))),
        (
            ["source=file", "source.path=take 3.wav", "source.spread=0.2", "source.offset_s=4"],
            lambda c: c.source == FileSource(path="take 3.wav", spread=0.2, offset_s=4.0),
        ),
        (["source=corpus", "source.spread=1"], lambda c: c.source == CorpusSource(spread=1.0)),
        (
            ["source=morph", "source.paths=[a.wav,b.flac,c.ogg]"],
            lambda c: c.source.paths == ("a.wav", "b.flac", "c.ogg"),
        ),
        (["quality.min_novelty=3", "quality.reject_copies=true"], lambda c: c.quality == QualityConfig(3.0, True)),
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
            "unknown key; keys of export=wav: bit_depth, loudness_lufs, normalize, sample_rate, true_peak_dbtp",
        ),
        (["+stereo.extra=2"], "stereo.extra", "2", "unknown key; keys of stereo=mono: none"),
        (["stereo.width=0.5"], "stereo.width", "0.5", "not a key of this option; keys of stereo=mono: none"),
        (
            ["chunking=latent_interp", "chunking.chunk_s=0.5"],
            "chunking.chunk_s",
            "0.5",
            "keys of chunking=latent_interp: anchor_interval_s",
        ),
        (
            ["export=ogg", "export.bit_depth=16"],
            "export.bit_depth",
            "16",
            "keys of export=ogg: loudness_lufs, normalize, quality, sample_rate, true_peak_dbtp",
        ),
        (["foo=1"], "foo", "1", "unknown key"),
        (["duration_s=abc"], "duration_s", "abc", "expected a float"),
        (["seed=1.5"], "seed", "1.5", "expected an integer"),
        (["duration_s=0"], "duration_s", "0.0", "[0.01, 600]"),
        (["duration_s=1e-9"], "duration_s", "1e-09", "[0.01, 600]"),
        (["duration_s=600.5"], "duration_s", "600.5", "[0.01, 600]"),
        (["duration_s=601"], "duration_s", "601.0", "[0.01, 600]"),
        (["export.bit_depth=20"], "export.bit_depth", "20", "wav allows 16, 24, 32"),
        (["chunking=nope"], "chunking", "nope", "choose one of crossfade, latent_interp"),
        (["stereo=mid_side", "stereo.width=2"], "stereo.width", "2.0", "[0, 1.5]"),
        (["reproduce=/no/such/sidecar.json"], "reproduce", "/no/such/sidecar.json", "sidecar .json (file not found)"),
        (["export.sample_rate=22050"], "export.sample_rate", "22050", "44100, 48000, 96000"),
        (["export.bit_depth=8"], "export.bit_depth", "8", "16, 24, 32"),
        (["export=flac", "export.bit_depth=32"], "export.bit_depth", "32", "flac allows 16, 24"),
        (["chunking=granular"], "chunking", "granular", "crossfade, latent_interp"),
        (["stereo=surround"], "stereo", "surround", "dual_seed, mid_side, mono"),
        (["stereo=mid_side", "stereo.width=1.6"], "stereo.width", "1.6", "[0, 1.5]"),
        (["stereo=mid_side", "stereo.width=-0.1"], "stereo.width", "-0.1", "[0, 1.5]"),
        (["seed=-1"], "seed", "-1", "[0, 4294967295]"),
        (["seed=4294967296"], "seed", "4294967296", "[0, 4294967295]"),
        (["count=0"], "count", "0", ">= 1"),
        (["writers=-1"], "writers", "-1", "[0, 64]"),
        (["seed=4294967295", "count=2"], "count", "2", "seed + count - 1"),
        (["chunking.overlap_ms=600"], "chunking.overlap_ms", "600.0", "at most half of chunking.chunk_s"),
        (["source=file"], "source.path", "''", "the path of an audio file"),
        (["source=file", "source.path=a.wav", "source.spread=1.5"], "source.spread", "1.5", "[0, 1]"),
        (["source=file", "source.path=a.wav", "source.offset_s=-1"], "source.offset_s", "-1.0", "[0, 86400]"),
        (["source=morph", "source.paths=[a.wav]"], "source.paths", "['a.wav']", "two or more audio files"),
        (["source.spread=0.5"], "source.spread", "0.5", "not a key of this option; keys of source=prior: none"),
        (["source=corpus", "source.path=a.wav"], "source.path", "a.wav", "keys of source=corpus: spread"),
        (["source=microphone"], "source", "microphone", "corpus, file, morph, prior"),
        (["quality.min_novelty=-1"], "quality.min_novelty", "-1.0", "[0, 60]"),
        (["quality.reject_copies=maybe"], "quality.reject_copies", "maybe", "not a valid bool"),
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
    assert run_config_from_dict(data).stereo.mode == "dual_seed"
    data["export"]["sample_rate"] = 22050
    with pytest.raises(ConfigError, match="export.sample_rate=22050"):
        run_config_from_dict(data)


def test_python_api_config_validates_without_hydra():
    assert GenerationConfig(duration_s=5.0).duration_s == 5.0
    with pytest.raises(ConfigError, match="export.bit_depth=20"):
        GenerationConfig(export=WavExport(bit_depth=20))
    with pytest.raises(ConfigError, match="stereo="):
        GenerationConfig(stereo=LatentInterpChunking())  # an option of another group
    assert GenerationConfig().stereo == MonoStereo()
    assert GenerationConfig().source == PriorSource()
    assert GenerationConfig(source=FileSource(path="take.wav", spread=0.3)).source.audio_files() == ("take.wav",)
    assert GenerationConfig(source=MorphSource(paths=["a.wav", "b.wav"])).source.paths == ("a.wav", "b.wav")
    with pytest.raises(ConfigError, match="source="):
        GenerationConfig(source=MonoStereo())


def test_sweep_points_are_expanded_like_hydra_does():
    points = split_sweep(["seed=range(0,3)", "chunking=crossfade,latent_interp", "duration_s=2"])
    assert len(points) == 6
    assert ["seed=0", "chunking=crossfade", "duration_s=2"] in points
    assert ["seed=2", "chunking=latent_interp", "duration_s=2"] in points


def test_preflight_validates_every_sweep_point_before_anything_runs():
    overrides = ["seed=range(0,2000)", "export.sample_rate=44100,48000,4800"]
    with pytest.raises(ConfigError, match=r"export.sample_rate=4800 is not allowed"):
        plan("config", overrides, RunConfig, to_run_config, multirun=True)
    found = plan("config", ["seed=range(0,2000)", "chunking=crossfade,latent_interp"], RunConfig, to_run_config, True)
    configs = list(found.configs())
    assert len(configs) == found.jobs == 4000
    assert {c.seed for c in configs} == set(range(2000))
    assert {c.chunking.mode for c in configs} == {"crossfade", "latent_interp"}
    assert len(found.compositions) == 2  # composed once per chunking option, not once per seed
    with pytest.raises(ConfigError, match=r"seed=-1"):
        plan("config", ["seed=5,-1"], RunConfig, to_run_config, True)
    with pytest.raises(ConfigError, match=r"seed=4294967295 .*count is 2"):
        plan("config", ["seed=0,4294967295", "count=2"], RunConfig, to_run_config, True)


def test_a_sweep_that_sets_a_key_of_another_option_is_refused_before_it_runs():
    # stereo.width belongs to mid_side: the mono points would render the same audio twice
    with pytest.raises(ConfigError, match=r"stereo.width=.*keys of stereo=mono: none"):
        plan("config", ["stereo=mono,mid_side", "stereo.width=0.5,1.0"], RunConfig, to_run_config, True)
    found = plan("config", ["stereo=mid_side", "stereo.width=0.5,1.0"], RunConfig, to_run_config, True)
    assert [c.stereo.width for c in found.configs()] == [0.5, 1.0]


def test_a_million_point_sweep_is_answered_at_once_without_listing_its_points():
    # a seed range is checked by its ends: no list of a million points is ever made
    huge = plan("config", ["seed=range(0,9000)", "count=3"], RunConfig, to_run_config, True)
    assert huge.jobs == 9000 and isinstance(huge.seeds, range) and len(huge.compositions) == 1
    with pytest.raises(ConfigError, match=rf"at most {MAX_SWEEP_JOBS} jobs per sweep; .*count=N"):
        plan("config", ["seed=range(0,1000000)"], RunConfig, to_run_config, True)
    with pytest.raises(ConfigError, match=r"seed=4294967295 .*count is 3"):
        plan("config", ["seed=range(4294967290,4294967296)", "count=3"], RunConfig, to_run_config, True)


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


def test_the_overnight_training_profile_trains_for_hours_and_the_command_line_still_wins():
    plain = to_train_config(compose_config("train", ["dataset=demo", "name=x"], TrainConfig))
    night = to_train_config(compose_config("train", ["dataset=demo", "name=x", "profile=overnight"], TrainConfig))
    assert (night.max_minutes, night.patience, night.checkpoint_every) == (600.0, 300, 25)
    assert night.max_epochs > 1000 and plain.max_minutes < 60
    longer = {"max_minutes", "max_epochs", "patience", "checkpoint_every"}
    same = {k: v for k, v in dataclasses.asdict(night).items() if k not in longer}
    assert same == {k: v for k, v in dataclasses.asdict(plain).items() if k not in longer}, "the same training, longer"
    capped = to_train_config(
        compose_config("train", ["dataset=demo", "name=x", "profile=overnight", "max_minutes=180"], TrainConfig)
    )
    assert capped.max_minutes == 180.0
    with pytest.raises(ConfigError) as info:
        compose_config("train", ["dataset=demo", "name=x", "profile=weekend"], TrainConfig)
    assert "profile" in str(info.value) and "\n" not in str(info.value)
