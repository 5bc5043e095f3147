"""Pre-flight: compose and validate every point of a run or sweep before anything runs, and turn
Hydra's and OmegaConf's composition errors into one-line ConfigErrors.

A sweep is held as its axes (one per swept key), never as a list of every point, so a sweep over
a million seeds is checked in bounded memory: points that differ only in their seed are composed
once, and the seed axis is checked by its range. Uses Hydra's public compose API only.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, RangeSweep
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from sda.config import MAX_SEED, OPTIONS, describe_keys, register_configs
from sda.errors import ConfigError, SdaError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Hydra makes a folder and a process state per job; past this a sweep is better written as one
# job with `count=` outputs.
MAX_SWEEP_JOBS = 10_000


def config_groups(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


# ---------------------------------------------------------------------------------------------
# One-line errors


def _schema_keys(schema: type, dotted: str) -> str | None:
    """`describe_keys` for the schema node that holds `dotted` (a group's base for options)."""
    node: Any = schema
    parts = dotted.split(".")
    for part in parts[:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None
        node = fields[part].type
        node = node if isinstance(node, type) else None
        if node is None:
            return None
    return describe_keys(node, ".".join(parts[:-1])) if dataclasses.is_dataclass(node) else None


def _override_text(message: str) -> tuple[str, str] | None:
    match = re.search(r"override '?([\w.+~/@-]+)=(.*?)'?$", message.splitlines()[0])
    return (match.group(1).lstrip("+~"), match.group(2)) if match else None


def _option_named(class_name: str) -> tuple[str, type] | None:
    for group, options in OPTIONS.items():
        for option in options.values():
            if option.__name__ == class_name:
                return group, option
    return None


def translate_error(error: BaseException, schema: type, overrides: Sequence[str] = ()) -> SdaError:
    """One-line ConfigError for a Hydra/OmegaConf composition failure."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    cause = error.__cause__
    if isinstance(error, MissingConfigException):
        match = re.search(r"Could not find '([^']+)/([^'/]+)'", first_line)
        if match:
            group, option = match.group(1), match.group(2)
            options = config_groups(group)
            return ConfigError(group, option, f"choose one of {', '.join(options)}" if options else "no such group")
        return ConfigError(first_line)
    if isinstance(error, OverrideParseException):
        return ConfigError(f"cannot parse the command line: {first_line}")
    if isinstance(cause, ValidationError):
        key = getattr(cause, "full_key", "") or "?"
        parsed = _override_text(first_line)
        value: Any = parsed[1] if parsed else getattr(cause, "value", None)
        msg = str(getattr(cause, "msg", "")).splitlines()[0]
        enum = re.search(r"expected one of \[(.*)\]", msg)
        kind = re.search(r"could not be converted to (\w+)", msg)
        if enum:
            allowed = f"one of {enum.group(1)}"
        elif kind:
            allowed = f"expected {'an' if kind.group(1)[0] in 'AEIOU' else 'a'} {kind.group(1).lower()}"
        else:
            allowed = msg
        return ConfigError(key, value, allowed)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        key = getattr(cause, "full_key", "") or "?"
        given = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") == key]
        parsed = _override_text(first_line) or (key, given[-1] if given else "?")
        not_in = re.search(r"Key '(\w+)' not in '(\w+)'", str(cause))
        option = _option_named(not_in.group(2)) if not_in else None
        if option is not None:  # a key of another option of the group (stereo.width with mono)
            return ConfigError(parsed[0], parsed[1], f"not a key of this option; {describe_keys(option[1], option[0])}")
        keys = _schema_keys(schema, key)
        return ConfigError(key, parsed[1], f"unknown key; {keys}" if keys else "unknown key")
    return ConfigError(first_line)


# ---------------------------------------------------------------------------------------------
# Composition


@dataclass(frozen=True)
class Composer:
    """Composes configs while Hydra is initialized by `composing`; raises one-line ConfigErrors."""

    extra: tuple[str, ...] = ()  # the search-path override of --config-dir

    def __call__(
        self, config_name: str, overrides: Sequence[str], schema: type, return_hydra_config: bool = False
    ) -> DictConfig:
        try:
            return compose(config_name, overrides=[*self.extra, *overrides], return_hydra_config=return_hydra_config)
        except (HydraException, ValidationError, ConfigAttributeError, ConfigKeyError) as error:
            raise translate_error(error, schema, overrides) from None


@contextmanager
def composing(config_name: str, config_dir: str | Path | None = None) -> Iterator[Composer]:
    """Hydra initialized to find conf/ and, with `--config-dir`, that folder first (as Hydra
    does: its configs override conf/'s). The primary config is looked up where it lives."""
    register_configs()
    if config_dir is None:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield Composer()
        return
    folder = Path(config_dir).expanduser().absolute()
    if not folder.is_dir():
        raise ConfigError("--config-dir", str(config_dir), "an existing folder of configs (such as jobs/)")
    primary_there = (folder / f"{config_name}.yaml").is_file()
    first, second = (folder, CONF_DIR) if primary_there else (CONF_DIR, folder)
    with initialize_config_dir(config_dir=str(first), version_base="1.3"):
        yield Composer((f"hydra.searchpath=[file://{second}]",))


def compose_config(
    config_name: str, overrides: Sequence[str], schema: type, config_dir: str | Path | None = None
) -> DictConfig:
    """Compose a config outside @hydra.main (tests and pre-flight). Raises ConfigError."""
    with composing(config_name, config_dir) as composer:
        return composer(config_name, overrides, schema)


# ---------------------------------------------------------------------------------------------
# Sweeps


@dataclass(frozen=True)
class Axis:
    """One swept key and its values as Hydra will sweep them (`values` may be a lazy range)."""

    key: str
    values: Sequence[Any]

    def text(self, index: int) -> str:
        return f"{self.key}={self.values[index]}"


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Hydra's parse of command-line overrides; one line (ConfigError) when they do not parse."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise ConfigError(f"cannot parse the command line: {str(error).splitlines()[0]}") from None


def sweep_axes(overrides: Sequence[str]) -> list[Axis]:
    """The axes of a sweep, in the order Hydra's basic sweeper expands them (the last axis
    varies fastest); a key given twice keeps its last value in its first place."""
    axes: OrderedDict[str, Axis] = OrderedDict()
    for override in parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(f"{key}: only lists, ranges and choices can be swept here")
            sweep = override.value()
            if isinstance(sweep, RangeSweep) and all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
                values: Sequence[Any] = range(sweep.start, sweep.stop, sweep.step)
            else:
                values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        axes[key] = Axis(key, values)
    return list(axes.values())


def split_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Every point of a (small) sweep as its own override list, in Hydra's job order."""
    axes = sweep_axes(overrides)
    return [[axis.text(i) for axis, i in zip(axes, point, strict=True)] for point in _indices(axes)]


def _indices(axes: Sequence[Axis]) -> Iterator[tuple[int, ...]]:
    return itertools.product(*(range(len(axis.values)) for axis in axes))


@dataclass
class Plan:
    """What pre-flight found. `compositions` holds one validated config per distinct point
    without its seed (the first seed value stands in); `seeds` the seed axis (or None: the
    composed seed); `jobs` how many jobs Hydra will run. `output_dir` is the run folder, or the
    sweep folder of a multirun, relative to the current folder."""

    multirun: bool
    output_dir: Path
    axes: list[Axis]
    compositions: dict[tuple[str, ...], Any]
    seeds: Sequence[int] | None
    config_name: str = "config"
    hydra: DictConfig | None = field(default=None, repr=False)
    # False when the folder's name needs values only Hydra's run knows (`${hydra:job.name}`):
    # `output_dir` is then its known leading part, good for a disk check only.
    output_dir_exact: bool = True

    def pinned_output_dir(self) -> list[str]:
        """The override that makes Hydra write into the folder pre-flight checked (a folder
        named by the time is resolved once, here), or none when it is not known exactly."""
        if not self.output_dir_exact:
            return []
        key = "hydra.sweep.dir" if self.multirun else "hydra.run.dir"
        text = str(self.output_dir).replace("\\", "\\\\").replace("'", "\\'")
        return [f"{key}='{text}'"]

    @property
    def jobs(self) -> int:
        return math.prod(len(axis.values) for axis in self.axes) if self.axes else 1

    def seed_count(self) -> int:
        return len(self.seeds) if self.seeds is not None else 1

    def each_composition(self) -> Iterator[tuple[Any, int]]:
        """(validated config, number of jobs that share it but for their seed)."""
        for config in self.compositions.values():
            yield config, self.seed_count()

    def configs(self) -> Iterator[Any]:
        """Every job's validated config, in job order (for small sweeps and tests)."""
        for point in _indices(self.axes):
            rest = tuple(axis.text(i) for axis, i in zip(self.axes, point, strict=True) if axis.key != "seed")
            config = self.compositions[rest]
            if self.seeds is not None:
                seed_index = point[[a.key for a in self.axes].index("seed")]
                config = dataclasses.replace(config, seed=int(self.seeds[seed_index]))
            yield config


def _check_seed_axis(values: Sequence[Any], count_of: Callable[[], int]) -> Sequence[int]:
    """Seeds as ints; every value checked (a range by its ends) against [0, 2^32 - count]."""
    if isinstance(values, range):
        seeds: Sequence[int] = values
        low, high = (min(values), max(values)) if len(values) else (0, 0)
    else:
        parsed = []
        for value in values:
            try:
                parsed.append(int(str(value)))
            except ValueError:
                raise ConfigError("seed", value, f"an integer in [0, {MAX_SEED}]") from None
        seeds = parsed
        low, high = min(parsed), max(parsed)
    if low < 0:
        raise ConfigError("seed", low, f"an integer in [0, {MAX_SEED}] (2^32 - 1)")
    count = count_of()
    if high + count - 1 > MAX_SEED:
        raise ConfigError("seed", high, f"seed + count - 1 must stay <= {MAX_SEED}; count is {count}")
    return seeds


def plan(
    config_name: str,
    overrides: Sequence[str],
    schema: type,
    convert: Callable[[DictConfig], Any],
    multirun: bool = False,
    config_dir: str | Path | None = None,
) -> Plan:
    """Compose and validate every point before anything runs. A config that sets
    `hydra.mode: MULTIRUN` (a named job) is a multirun without `-m`, as in Hydra; its
    `hydra.sweeper.params` are axes like the command line's."""
    with composing(config_name, config_dir) as compose_one:
        plain = [o for o in overrides if not _is_sweep(o)]
        base = compose_one(config_name, plain, schema, return_hydra_config=True)
        multirun = multirun or OmegaConf.select(base, "hydra.mode") == RunMode.MULTIRUN
        output_dir, exact = _output_dir(base, multirun)
        if not multirun:
            single = base if len(plain) == len(overrides) else compose_one(config_name, overrides, schema)
            config = convert(single)
            return Plan(False, output_dir, [], {(): config}, None, config_name, base.hydra, exact)
        sweeper_params = OmegaConf.select(base, "hydra.sweeper.params") or {}
        axes = sweep_axes([f"{k}={v}" for k, v in sweeper_params.items()] + list(overrides))
        jobs = math.prod(len(axis.values) for axis in axes)
        if jobs > MAX_SWEEP_JOBS:
            raise ConfigError(
                "-m",
                f"{jobs} jobs",
                f"at most {MAX_SWEEP_JOBS} jobs per sweep; for many seeds use one job with "
                "seed=FIRST count=N (one folder, every output verified and resumable)",
            )
        rest_axes = [axis for axis in axes if axis.key != "seed"]
        compositions: dict[tuple[str, ...], Any] = {}
        seed_axis = next((axis for axis in axes if axis.key == "seed"), None)
        first_seed = [f"seed={seed_axis.values[0]}"] if seed_axis is not None and len(seed_axis.values) else []
        for point in _indices(rest_axes):
            rest = tuple(axis.text(i) for axis, i in zip(rest_axes, point, strict=True))
            compositions[rest] = convert(compose_one(config_name, [*rest, *first_seed], schema))
        seeds = None
        if seed_axis is not None:
            seeds = _check_seed_axis(seed_axis.values, lambda: max(c.count for c in compositions.values()))
        return Plan(True, output_dir, axes, compositions, seeds, config_name, base.hydra, exact)


def _output_dir(cfg: DictConfig, multirun: bool) -> tuple[Path, bool]:
    """(the run or sweep folder, whether exact), resolved as far as composition allows: a folder
    named with `${hydra:runtime...}` is only known once Hydra runs, so its known leading part
    stands in."""
    node = cfg.hydra.sweep if multirun else cfg.hydra.run
    try:
        return Path(str(node.dir)), True
    except OmegaConfBaseException:
        known = str(OmegaConf.to_container(node, resolve=False)["dir"]).split("${", 1)[0]
        return (Path(known) if known.endswith("/") else Path(known).parent), False


def _is_sweep(override: str) -> bool:
    try:
        return OverridesParser.create().parse_overrides([override])[0].is_sweep_override()
    except OverrideParseException:
        return False
