"""What the entry points share: composing configs with Hydra's compose API, turning Hydra and
OmegaConf composition errors into one-line ConfigErrors, and pre-flight validation of every point
of a sweep before Hydra starts the first job.

Only the entry points (`sda.run`, `sda.train`, `sda.evaluate`) use this module.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, version
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from sda.config import register_configs
from sda.errors import ConfigError, SdaError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Flags after which Hydra only prints something: nothing to validate.
_INFO_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "resolve")


def config_groups(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _schema_keys(schema: type, dotted: str) -> list[str] | None:
    """Keys allowed in the schema node at `dotted` (its parent for a leaf), or None."""
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        hints = typing.get_type_hints(node)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            return None
        node = hints[part]
    return sorted(f.name for f in dataclasses.fields(node))


def _override_text(message: str) -> tuple[str, str] | None:
    match = re.search(r"override '?([\w.+~/@-]+)=(.*?)'?$", message.splitlines()[0])
    return (match.group(1).lstrip("+~"), match.group(2)) if match else None


def translate_error(error: BaseException, schema: type, overrides: Sequence[str] = ()) -> SdaError:
    """One-line ConfigError for a Hydra/OmegaConf composition failure."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    cause = error.__cause__
    if isinstance(error, MissingConfigException):
        match = re.search(r"Could not find '([^']+)/([^'/]+)'", first_line)
        if match:
            group, option = match.group(1), match.group(2)
            options = config_groups(group)
            return ConfigError(
                group, option, f"choose one of {', '.join(options)}" if options else "no such config group"
            )
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
        keys = _schema_keys(schema, key)
        where = f"keys in {key.rsplit('.', 1)[0]}" if "." in key else "keys at the top level"
        return ConfigError(key, parsed[1], f"unknown key; {where}: {', '.join(keys)}" if keys else "unknown key")
    return ConfigError(first_line)


def _compose(config_name: str, overrides: Sequence[str], schema: type, return_hydra_config: bool = False) -> DictConfig:
    try:
        return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except (HydraException, ValidationError, ConfigAttributeError, ConfigKeyError) as error:
        raise translate_error(error, schema, overrides) from None


@contextmanager
def initialized(config_dir: str | Path | None = None) -> Iterator[None]:
    """Hydra initialised with the search path `@hydra.main` builds: conf/, plus `config_dir`
    (`--config-dir`) prepended, as Hydra does, so its configs can include and override conf/'s."""
    backup = get_gh_backup()
    version.setbase("1.3")
    search_path = create_config_search_path(str(CONF_DIR))
    if config_dir is not None:
        folder = Path(config_dir).expanduser().absolute()
        if not folder.is_dir():
            raise ConfigError("--config-dir", str(config_dir), "an existing folder of configs (such as jobs/)")
        search_path.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    Hydra.create_main_hydra2(task_name="app", config_search_path=search_path)
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def compose_config(
    config_name: str, overrides: Sequence[str], schema: type, config_dir: str | Path | None = None
) -> DictConfig:
    """Compose a config outside @hydra.main (tests and pre-flight). Raises ConfigError."""
    register_configs()
    with initialized(config_dir):
        return _compose(config_name, overrides, schema)


def split_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Every point of a sweep as its own override list (as Hydra's basic sweeper expands it)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    axes: OrderedDict[str, list[str]] = OrderedDict()
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(f"{key}: only lists, ranges and choices can be swept here")
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
    points: list[list[str]] = [[]]
    for values in axes.values():
        points = [point + [value] for point in points for value in values]
    return points


@dataclass
class Plan:
    """What pre-flight found: every point's validated config, in Hydra's job order, and where
    the outputs go (the run folder, or the sweep folder of a multirun), relative to the cwd."""

    configs: list[Any]
    multirun: bool
    output_dir: Path


def plan(
    config_name: str,
    overrides: Sequence[str],
    multirun: bool,
    schema: type,
    convert: Callable[[DictConfig], Any],
    fast_keys: dict[str, Callable[[Any, str], Any]] | None = None,
    config_dir: str | Path | None = None,
) -> Plan:
    """Compose and validate every point before anything runs. A config that sets
    `hydra.mode: MULTIRUN` (a named job) is a multirun without `-m`, as in Hydra.

    A sweep over thousands of seeds must not cost thousands of compositions: points that differ
    only in a `fast_keys` key are composed once, and that key is checked by the given function
    (which receives the validated config and the raw value and returns the re-validated config)."""
    register_configs()
    fast_keys = fast_keys or {}
    with initialized(config_dir):
        base = _compose(config_name, [o for o in overrides if not _is_sweep(o)], schema, return_hydra_config=True)
        multirun = multirun or OmegaConf.select(base, "hydra.mode") == RunMode.MULTIRUN
        output_dir = _output_dir(base, multirun)
        if not multirun:
            single = base if not any(_is_sweep(o) for o in overrides) else _compose(config_name, overrides, schema)
            return Plan([convert(single)], False, output_dir)
        sweeper_params = OmegaConf.select(base, "hydra.sweeper.params") or {}
        arguments = [f"{k}={v}" for k, v in sweeper_params.items()] + list(overrides)
        points = split_sweep(arguments)
        cache: dict[tuple[str, ...], Any] = {}
        validated = []
        for point in points:
            fast = [o for o in point if o.split("=", 1)[0] in fast_keys]
            rest = tuple(o for o in point if o.split("=", 1)[0] not in fast_keys)
            if rest not in cache:
                cache[rest] = convert(_compose(config_name, list(rest), schema))
            config = cache[rest]
            for item in fast:
                key, value = item.split("=", 1)
                config = fast_keys[key](config, value)
            validated.append(config)
        return Plan(validated, True, output_dir)


def _output_dir(cfg: DictConfig, multirun: bool) -> Path:
    """The run or sweep folder, resolved as far as composition allows: a folder named with
    `${hydra:runtime...}` is only known once Hydra runs, so its known leading part stands in."""
    node = cfg.hydra.sweep if multirun else cfg.hydra.run
    try:
        return Path(str(node.dir))
    except OmegaConfBaseException:
        known = str(OmegaConf.to_container(node, resolve=False)["dir"]).split("${", 1)[0]
        return Path(known) if known.endswith("/") else Path(known).parent


def _is_sweep(override: str) -> bool:
    try:
        return OverridesParser.create().parse_overrides([override])[0].is_sweep_override()
    except OverrideParseException:
        return False


def parse_command_line(argv: Sequence[str]) -> Any:
    """Hydra's own argument parser, so pre-flight reads the command line exactly as Hydra will."""
    return get_args_parser().parse_args(list(argv))


def config_name_of(args: Any, default: str) -> str:
    """The primary config's name: `--config-name` (`-cn`) or the entry point's default."""
    name = getattr(args, "config_name", None) or default
    return name[: -len(".yaml")] if name.endswith(".yaml") else name


def is_info_request(args: Any) -> bool:
    return any(getattr(args, flag, None) for flag in _INFO_FLAGS)


def fail(error: SdaError) -> typing.NoReturn:
    """Print one line and exit with the error's status."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)


def single_run_main(
    command: str,
    config_name: str,
    schema: type,
    convert: Callable[[DictConfig], Any],
    hydra_main: Callable[[], None],
    failed: list[SdaError],
) -> None:
    """The `main` of an entry point that runs one job (sda.train, sda.evaluate): pre-flight the
    command line, run Hydra, exit with the first recorded failure's status."""
    args = parse_command_line(sys.argv[1:])
    if not is_info_request(args):
        try:
            if args.multirun:
                raise SdaError(f"{command} runs one job at a time; drop -m/--multirun")
            plan(config_name, args.overrides, False, schema, convert)
        except SdaError as error:
            fail(error)
    hydra_main()
    if failed:
        sys.exit(failed[0].exit_code)
