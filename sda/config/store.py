"""Hydra's side of the schemas: registration in the ConfigStore, and turning a composed
DictConfig (or a plain dict) into a validated, sealed object."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sda.config.evaluation import EvaluateConfig, SuiteConfig
from sda.config.generation import ChunkingConfig, ExportConfig, ModelConfig, RunConfig, StereoConfig
from sda.config.training import DatasetConfig, TrainConfig
from sda.errors import ConfigError


def check_known_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Reject keys the schema does not declare (Hydra's `+key=value` adds them regardless)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            where = f"in {prefix[:-1]}" if prefix else "at the top level"
            raise ConfigError(
                full, OmegaConf.select(cfg, str(key), throw_on_missing=False), f"unknown key; keys {where}: {allowed}"
            )
        sub_type = hints[key]
        node = cfg._get_node(key)  # noqa: SLF001 - the only way to see a node without resolving it
        if sub_type is not None and dataclasses.is_dataclass(sub_type) and isinstance(node, DictConfig):
            check_known_keys(node, sub_type, f"{full}.")


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Validate a composed `sda.run` config into a sealed RunConfig (raises ConfigError)."""
    return _to_object(cfg, RunConfig)


def _to_object(cfg: DictConfig, schema: type) -> Any:
    cfg = cfg.copy()
    if "hydra" in cfg:
        with _open(cfg):
            del cfg["hydra"]
    check_known_keys(cfg, schema)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required but not set (give it as {missing[0]}=...)")
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, schema):
        raise ConfigError("config", type(obj).__name__, f"expected a {schema.__name__}")
    return obj


class _open:
    """Temporarily lift struct mode to edit a copy."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> None:
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc: object) -> None:
        OmegaConf.set_struct(self.cfg, True)


def run_config_from_dict(data: dict[str, Any], schema: type = RunConfig) -> Any:
    """Build a validated config from a plain dict (a sidecar's `config`), through the schema."""
    base = OmegaConf.structured(schema)
    cfg = OmegaConf.merge(base, OmegaConf.create(data))
    return _to_object(cfg, schema)


# --------------------------------------------------------------------------------------------
# Training and evaluation


def to_train_config(cfg: DictConfig) -> TrainConfig:
    return _to_object(cfg, TrainConfig)


def to_evaluate_config(cfg: DictConfig) -> EvaluateConfig:
    return _to_object(cfg, EvaluateConfig)


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="sda_run_schema", node=RunConfig)
    cs.store(name="sda_train_schema", node=TrainConfig)
    cs.store(name="sda_evaluate_schema", node=EvaluateConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="chunking", name="schema", node=ChunkingConfig)
    cs.store(group="stereo", name="schema", node=StereoConfig)
    cs.store(group="export", name="schema", node=ExportConfig)
    cs.store(group="dataset", name="schema", node=DatasetConfig)
    cs.store(group="suite", name="schema", node=SuiteConfig)
