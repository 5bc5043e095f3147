"""Hydra's side of the schemas: registration in the ConfigStore, and turning a composed
DictConfig (or a plain dict) into a validated, sealed object."""

from __future__ import annotations

import dataclasses
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sda.config.evaluation import EvaluateConfig, SuiteConfig
from sda.config.generation import OPTIONS, ModelConfig, RunConfig
from sda.config.training import DatasetConfig, TrainConfig
from sda.errors import ConfigError


def check_known_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Reject keys the schema does not declare (Hydra's `+key=value` adds them regardless). A
    group's node is checked against the option chosen for it, not the group's base class."""
    fields = {f.name for f in dataclasses.fields(schema)}
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if key not in fields:
            value = OmegaConf.select(cfg, str(key), throw_on_missing=False)
            raise ConfigError(full, value, f"unknown key; {describe_keys(schema, prefix[:-1])}")
        node = cfg._get_node(key)  # noqa: SLF001 - the only way to see a node without resolving it
        if isinstance(node, DictConfig) and not node._is_missing():  # noqa: SLF001
            node_type = OmegaConf.get_type(node)
            if node_type is not None and dataclasses.is_dataclass(node_type):
                check_known_keys(node, node_type, f"{full}.")


def describe_keys(schema: type, where: str) -> str:
    """`keys of stereo=mono: none` / `keys at the top level: a, b` for an error message."""
    names = ", ".join(sorted(f.name for f in dataclasses.fields(schema))) or "none"
    option = getattr(schema, "OPTION", None)
    if option is not None:
        return f"keys of {where}={option}: {names}"
    return f"keys in {where}: {names}" if where else f"keys at the top level: {names}"


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
    """Build a validated config from a plain dict (a sidecar's `config`, as `to_dict` writes
    it: each group's option named by its `mode`/`format` key), through the schemas."""
    data = dict(data)
    for group, options in OPTIONS.items():
        if isinstance(data.get(group), dict):
            fields = dict(data[group])
            name_key = next(iter(options.values())).NAME_KEY
            name = fields.pop(name_key, None)
            if name not in options:
                raise ConfigError(f"{group}.{name_key}", name, f"one of {', '.join(options)}")
            data[group] = OmegaConf.merge(OmegaConf.structured(options[name]), fields)
    cfg = OmegaConf.merge(OmegaConf.structured(schema), data)
    return _to_object(cfg, schema)


# --------------------------------------------------------------------------------------------
# Training and evaluation


def to_train_config(cfg: DictConfig) -> TrainConfig:
    return _to_object(cfg, TrainConfig)


def to_evaluate_config(cfg: DictConfig) -> EvaluateConfig:
    return _to_object(cfg, EvaluateConfig)


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore, once per process (storing them again, as every
    pre-flight did, cost 25-35 ms of each run on the 2-core CPU)."""
    cs = ConfigStore.instance()
    if "sda_run_schema.yaml" in cs.repo:
        return
    cs.store(name="sda_run_schema", node=RunConfig)
    cs.store(name="sda_train_schema", node=TrainConfig)
    cs.store(name="sda_evaluate_schema", node=EvaluateConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
    # One schema per option (conf/<group>/<option>.yaml names `<option>_schema` in its defaults).
    for group, options in OPTIONS.items():
        for name, option in options.items():
            cs.store(group=group, name=f"{name}_schema", node=option)
    cs.store(group="dataset", name="schema", node=DatasetConfig)
    cs.store(group="suite", name="schema", node=SuiteConfig)
