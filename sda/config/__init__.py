"""Configuration schemas, validation, and their registration in Hydra's ConfigStore.

Each config group has dataclass schemas; YAML files in `conf/<group>/` name theirs in their
defaults list, so Hydra checks types while composing. A composed config is turned into typed
objects once, at the boundary (`sda.config.store`): unknown keys (also ones added with `+key=`)
are rejected, then `OmegaConf.to_object` builds the dataclasses, whose `validate()` checks ranges
and names the full key, the value and what is allowed. After validation an object is sealed:
assigning to it raises.

The schemas are not `frozen=True` dataclasses because OmegaConf marks frozen structured configs
read-only, and Hydra could no longer merge YAML and overrides into them.

    base.py         sealing, plain dicts, the range / seed / device checks
    generation.py   sda.run: model, chunking, stereo, export, source, phase, quality, GenerationConfig,
                    RunConfig
    training.py     sda.train: dataset, TrainConfig (whose augmentation, spectrogram and model
                    groups are the run-time types of sda.data.windows, sda.dsp.spectrogram, sda.model)
    evaluation.py   sda.evaluate: EvaluateConfig
    store.py        ConfigStore registration and DictConfig -> validated object
"""

from sda.config.base import MAX_SEED, Sealed, check_device, check_range, check_seed, resolve_device
from sda.config.evaluation import EvaluateConfig
from sda.config.generation import (
    INTERNAL_SAMPLE_RATE,
    MAX_DURATION_S,
    MIN_DURATION_S,
    OPTIONS,
    SAMPLE_RATES,
    ChunkingConfig,
    CorpusSource,
    CrossfadeChunking,
    DualSeedStereo,
    ExportConfig,
    FileSource,
    FlacExport,
    GenerationConfig,
    GroupOption,
    InverseMel,
    LatentInterpChunking,
    MidSideStereo,
    ModelConfig,
    MonoStereo,
    MorphSource,
    Normalize,
    OggExport,
    OneshotChunking,
    PhaseConfig,
    PhaseInit,
    PriorSource,
    QualityConfig,
    RunConfig,
    SourceConfig,
    StereoConfig,
    WavExport,
    with_seed,
)
from sda.config.store import (
    check_known_keys,
    describe_keys,
    register_configs,
    run_config_from_dict,
    to_evaluate_config,
    to_run_config,
    to_train_config,
)
from sda.config.training import DatasetConfig, TrainConfig

__all__ = [
    "INTERNAL_SAMPLE_RATE",
    "MAX_DURATION_S",
    "MAX_SEED",
    "MIN_DURATION_S",
    "OPTIONS",
    "SAMPLE_RATES",
    "ChunkingConfig",
    "CorpusSource",
    "CrossfadeChunking",
    "DatasetConfig",
    "DualSeedStereo",
    "EvaluateConfig",
    "ExportConfig",
    "FileSource",
    "FlacExport",
    "GenerationConfig",
    "GroupOption",
    "InverseMel",
    "LatentInterpChunking",
    "MidSideStereo",
    "ModelConfig",
    "MonoStereo",
    "MorphSource",
    "Normalize",
    "OggExport",
    "OneshotChunking",
    "PhaseConfig",
    "PhaseInit",
    "PriorSource",
    "QualityConfig",
    "RunConfig",
    "Sealed",
    "SourceConfig",
    "StereoConfig",
    "TrainConfig",
    "WavExport",
    "check_device",
    "check_known_keys",
    "describe_keys",
    "check_range",
    "check_seed",
    "register_configs",
    "resolve_device",
    "run_config_from_dict",
    "to_evaluate_config",
    "to_run_config",
    "to_train_config",
    "with_seed",
]
