"""`resume=FOLDER` and `reproduce=SIDECAR`: what may be replayed, and nothing else.

Sidecars and output folders are shared between people ("reproduce my favourite"): they are
untrusted input. Neither can set anything but generation settings.

- reproduce: from a sidecar only the generation fields of the schema are taken (the output's
  seed and identity parameters, and the model reference), each checked like a command-line
  value; any other key, `hydra.*` above all, is refused with one line naming it. Command-line
  overrides win over the sidecar's values. The source files the sidecar records must be there
  with the content (sha256) they had, unless the command line chooses another source.
- resume: `sda.run` records its own command in every run or sweep folder (`sda_command.json`:
  the generation settings as explicit overrides, the sweep's axes, the launcher and a few of its
  parameters, and every source file with its sha256). Resume replays only that, into that
  folder, after checking every entry against what sda itself writes and that every source file
  still holds what it held; Hydra's own files in the folder (logging, callbacks, search path,
  config name) are never read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from omegaconf import OmegaConf

from sda.config import OPTIONS, GenerationConfig, ModelConfig, PhaseConfig, QualityConfig, resolve_device
from sda.dsp.difference import log_spectral_distance_db, peak_difference_dbfs
from sda.entry import parse_command_line
from sda.errors import ConfigError
from sda.files import file_sha256, write_json_atomic
from sda.model import resolve_checkpoint
from sda.numerics import expected_agreement, numerics_status
from sda.outputs import read_sidecar
from sda.preflight import Plan, parse_overrides
from sda.sources import source_file_sha256, source_files

log = logging.getLogger("sda.run")

COMMAND_FILE = "sda_command.json"
COMMAND_FORMAT_VERSION = 1
# Recorded in a sidecar's config but not carried over by reproduce=: they decide how the audio is
# computed or which job made it, not what it is (and another machine's device may not exist here).
NOT_REPRODUCED = ("device", "batch_size", "writers", "count")
# Launchers and the launcher parameters a recorded command may set (values: numbers, or short
# names such as a Slurm partition; nothing that reaches a shell or a Python import).
LAUNCHERS = ("basic", "joblib", "submitit_local", "submitit_slurm")
LAUNCHER_PARAMETERS = (
    "n_jobs",
    "timeout_min",
    "cpus_per_task",
    "gpus_per_node",
    "tasks_per_node",
    "mem_gb",
    "nodes",
    "partition",
    "qos",
    "account",
    "constraint",
    "max_num_timeout",
    "signal_delay_s",
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:,@+-]{1,64}$")


# ---------------------------------------------------------------------------------------------
# Override texts


def override_text(key: str, value: Any) -> str:
    """`key=value` that Hydra parses back to exactly `value` (strings are quoted only when
    needed: a checkpoint path with spaces, or a string that would read as a number)."""
    if isinstance(value, bool) or value is None:
        return f"{key}={'null' if value is None else str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{key}={value!r}"
    text = str(value)
    plain = f"{key}={text}"
    try:
        if parse_overrides([plain])[0].value() == text:
            return plain
    except ConfigError:
        pass
    return f"{key}={quoted_text(text)}"


# ---------------------------------------------------------------------------------------------
# Generation settings as overrides, checked against the schema


def _refused(where: tuple[str, str], why: str) -> ConfigError:
    """One line naming the file and the entry: `reproduce='x.json' is not allowed: 'hydra' is ...`."""
    return ConfigError(where[0], where[1], why)


def list_override_text(key: str, values: Sequence[str]) -> str:
    """`key=['a','b c']`: every element quoted, so a path with spaces, commas or brackets parses
    back to itself."""
    return f"{key}=[{','.join(quoted_text(str(v)) for v in values)}]"


def quoted_text(text: str) -> str:
    """`text` as a single-quoted Hydra string. In one, a backslash is literal unless backslashes
    come before a quote (the closing one too): those are doubled, and the quote escaped."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{escaped}'"


def _value_text(key: str, value: Any, where: tuple[str, str]) -> str:
    """The override for one recorded setting: a plain value, or a list of strings (source.paths)."""
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise _refused(where, f"{key!r} must be a list of file paths")
        return list_override_text(key, value)
    return override_text(key, _scalar(key, value, where))


def _scalar(key: str, value: Any, where: tuple[str, str]) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            raise _refused(where, f"{key!r} must be a finite number")
        return value
    raise _refused(where, f"{key!r} must be a plain value, not a {type(value).__name__}")


def _group_overrides(group: str, data: Any, where: tuple[str, str]) -> list[str]:
    """`group=option` and `group.field=value` for a recorded option of a config group."""
    options = OPTIONS[group]
    if not isinstance(data, dict):
        raise _refused(where, f"{group!r} must be a mapping that names its option")
    name_key = next(iter(options.values())).NAME_KEY
    option_name = data.get(name_key)
    if option_name not in options:
        raise _refused(where, f"{group}.{name_key}={option_name!r} names no option (one of {', '.join(options)})")
    option = options[option_name]
    fields = {f.name for f in dataclasses.fields(option)}
    texts = [f"{group}={option_name}"]
    for key, value in data.items():
        if key == name_key:
            continue
        if key not in fields:
            raise _refused(where, f"{group}.{key!s} is not a setting of {group}={option_name} (refused)")
        texts.append(_value_text(f"{group}.{key}", value, where))
    return texts


def _section_overrides(section: str, schema: type, data: Any, where: tuple[str, str]) -> list[str]:
    if not isinstance(data, dict):
        raise _refused(where, f"{section!r} must be a mapping of settings")
    fields = {f.name for f in dataclasses.fields(schema)}
    texts = []
    for key, value in data.items():
        if key not in fields:
            raise _refused(where, f"{section}.{key!s} is not a {section} setting (refused)")
        texts.append(override_text(f"{section}.{key}", _scalar(f"{section}.{key}", value, where)))
    return texts


def generation_overrides(config: dict[str, Any], where: tuple[str, str], skip: Sequence[str] = ()) -> list[str]:
    """Overrides that compose into the generation settings `config` records (a GenerationConfig's
    `generation_fields()`), checked key by key; `where` (key, file) names the source in error lines. Keys in
    `skip` are left out; any key that is not a generation setting is refused."""
    if not isinstance(config, dict):
        raise _refused(where, "its config must be a mapping of generation settings")
    top = {f.name: f for f in dataclasses.fields(GenerationConfig)}
    texts: list[str] = []
    for key, value in config.items():
        if key not in top:
            raise _refused(where, f"{key!r} is not a generation setting (refused)")
        if key in skip:
            continue
        if key in OPTIONS:
            texts += _group_overrides(key, value, where)
        elif key == "phase":
            texts += _section_overrides("phase", PhaseConfig, value, where)
        elif key == "quality":
            texts += _section_overrides("quality", QualityConfig, value, where)
        elif key == "model":
            texts += _section_overrides("model", ModelConfig, value, where)
        else:
            texts.append(override_text(key, _scalar(key, value, where)))
    return texts


def _given(overrides: Sequence[str]) -> set[str]:
    return {override.key_or_group for override in parse_overrides([o for o in overrides if not o.startswith("-")])}


def _without_given(texts: Sequence[str], given: set[str]) -> list[str]:
    """Drop recorded overrides the command line replaces: a key given there, or a whole group
    when its option is chosen there (`stereo=mid_side` replaces the recorded stereo group)."""

    def replaced(text: str) -> bool:
        key = text.split("=", 1)[0]
        group = key.split(".", 1)[0]
        return key in given or (group in OPTIONS and group in given)

    return [text for text in texts if not replaced(text)]


# ---------------------------------------------------------------------------------------------
# reproduce=SIDECAR


def _config_of_format_1(config: dict[str, Any]) -> dict[str, Any]:
    """A sidecar of format 1 recorded every field of a group whatever the option (a mono file's
    stereo width): keep the fields the option has, under their present names. The dropped
    fields never changed the audio."""
    config = dict(config)
    renamed = {"export": {"ogg_quality": "quality"}}
    for group, options in OPTIONS.items():
        data = config.get(group)
        if not isinstance(data, dict):
            continue
        name_key = next(iter(options.values())).NAME_KEY
        option = options.get(data.get(name_key))
        if option is None:
            continue
        fields = {f.name for f in dataclasses.fields(option)}
        names = renamed.get(group, {})
        kept = {names.get(k, k): v for k, v in data.items() if names.get(k, k) in fields}
        config[group] = {name_key: data[name_key], **kept}
    return config


def reproduce_overrides(record: dict[str, Any], overrides: Sequence[str], where: str = "sidecar") -> list[str]:
    """The overrides that make again the output a sidecar describes (count=1, its own seed),
    followed by `overrides`, which win."""
    config = record.get("config")
    if isinstance(config, dict) and record.get("sidecar_format_version", 1) == 1:
        config = _config_of_format_1(config)
    seed = record.get("seed")
    if not isinstance(config, dict) or isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("reproduce", where, "a sidecar written by sda.run (no config or seed in it)")
    source = ("reproduce", where)
    recorded = [f"seed={seed}", "count=1", *generation_overrides(config, source, skip=(*NOT_REPRODUCED, "seed"))]
    given = _given(overrides)
    if not any(key == "source" or key.startswith("source.") for key in given):
        check_source_files(record.get("source"), source, "the output was made")
    return _without_given(recorded, given) + list(overrides)


def _check_unchanged(
    entries: Any,
    where: tuple[str, str],
    kind: str,
    key: str,
    sha256_of: Callable[[str], str | None],
    since: str,
    hint: Callable[[str], str] = lambda name: "",
) -> None:
    """Every recorded `{key: name, "sha256": ...}` entry names a file that is there (`sha256_of`
    gives None when not) and holds what it held; a one-line ConfigError otherwise, naming the
    file as a `kind`, with `hint(name)` after a change. None: nothing was recorded."""
    if entries is None:
        return
    if not isinstance(entries, list):
        raise _refused(where, f"its {kind}s must be a list of {key}s and sha256 sums")
    for entry in entries:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in (key, "sha256")):
            raise _refused(where, f"{entry!r} is not a {kind}'s {key} and sha256 (refused)")
        name = entry[key]
        found = sha256_of(name)
        if found is None:
            raise _refused(where, f"its {kind} {name!r} is missing")
        if found != entry["sha256"]:
            raise _refused(
                where,
                f"its {kind} {name!r} changed since {since} "
                f"(sha256 {entry['sha256'][:12]}..., now {found[:12]}...){hint(name)}",
            )


def check_source_files(recorded: Any, where: tuple[str, str], since: str) -> None:
    """Every recorded source file (`{"files": [{"path", "sha256"}]}` of a sidecar, or the list of
    a recorded command) is there and holds what it held; a one-line ConfigError otherwise."""

    def sha256_of(path: str) -> str | None:
        try:
            return source_file_sha256(path)
        except ConfigError:
            return None

    files = recorded.get("files") if isinstance(recorded, dict) else recorded
    _check_unchanged(files, where, "source file", "path", sha256_of, since)


def check_models(recorded: Any, where: tuple[str, str]) -> None:
    """Every model a recorded command used (`[{"checkpoint", "sha256"}]`; absent in a folder
    recorded before models were) still resolves to the file it did: a sweep resumed after a model
    was retrained or replaced (the shipped default, by an upgrade) would otherwise finish with
    another model's outputs beside the first's. A one-line ConfigError otherwise."""

    def sha256_of(name: str) -> str | None:
        try:
            return file_sha256(resolve_checkpoint(name, Path.cwd()))
        except OSError:
            return None

    def hint(name: str) -> str:
        where_now = resolve_checkpoint(name, Path.cwd())
        return f"; it is {where_now}: to make the rest with it anyway, name it: model.checkpoint={name}"

    _check_unchanged(recorded, where, "model", "checkpoint", sha256_of, "the run started", hint)


def read_reproduce_sidecar(path: Path) -> dict[str, Any]:
    try:
        return read_sidecar(path)
    except FileNotFoundError:
        raise ConfigError("reproduce", str(path), "the path of an output's sidecar .json (file not found)") from None
    except (OSError, ValueError) as error:
        raise ConfigError("reproduce", str(path), f"an output's sidecar .json ({error})") from None


# ---------------------------------------------------------------------------------------------
# resume=FOLDER


def recorded_command(found: Plan) -> dict[str, Any]:
    """What `sda_command.json` holds for a planned run or sweep: its generation settings as
    explicit overrides against conf/config.yaml (a named job's values included, so resume needs
    neither its config name nor its folder), the sweep's axes, and the launcher."""
    first = next(iter(found.compositions.values()))
    fields = first.generation_fields()
    swept = {axis.key for axis in found.axes if len(axis.values) > 1 or axis.key == "seed" and found.multirun}
    skip = {key for key in swept if key in fields}
    overrides = generation_overrides(fields, ("resume", COMMAND_FILE), skip=tuple(skip))
    overrides = [o for o in overrides if o.split("=", 1)[0] not in swept]
    for axis in found.axes:
        if axis.key in swept:
            overrides.append(_axis_text(axis))
    hydra = found.hydra
    launcher = OmegaConf.select(hydra, "runtime.choices")["hydra/launcher"] if hydra is not None else "basic"
    params = {}
    if hydra is not None and launcher != "basic":
        for key in LAUNCHER_PARAMETERS:
            value = OmegaConf.select(hydra, f"launcher.{key}", default=None)
            if value is not None:
                params[key] = value
    files = {entry["path"]: entry for config in found.compositions.values() for entry in source_files(config.source)}
    models: dict[str, dict[str, str]] = {}
    for config in found.compositions.values():
        name = config.model.checkpoint
        if name not in models:  # pre-flight has found every model already
            models[name] = {"checkpoint": name, "sha256": file_sha256(resolve_checkpoint(name, Path.cwd()))}
    return {
        "format_version": COMMAND_FORMAT_VERSION,
        "multirun": found.multirun,
        "overrides": overrides,
        "launcher": {"name": launcher, "parameters": params},
        "source_files": list(files.values()),
        "models": list(models.values()),
    }


def _axis_text(axis: Any) -> str:
    values = axis.values
    if isinstance(values, range):
        return f"{axis.key}=range({values.start},{values.stop},{values.step})"
    return f"{axis.key}=" + ",".join(str(v) for v in values)


def write_command(folder: Path, command: dict[str, Any]) -> None:
    write_json_atomic(folder / COMMAND_FILE, command, replace=True)


def _check_recorded_override(text: str, where: tuple[str, str]) -> None:
    """An entry of a recorded command: only generation settings and sweeps over them."""
    if not isinstance(text, str):
        raise _refused(where, f"{text!r} is not an override string")
    parsed = parse_overrides([text])[0]
    key = parsed.key_or_group
    top = key.split(".", 1)[0].split("/", 1)[0]
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    if top not in names or parsed.package is not None or text.startswith(("+", "~")):
        raise _refused(where, f"{text!r} is not a generation setting (refused)")


def resume_command(folder: Path, rest: Sequence[str]) -> list[str]:
    """The command line that reruns the run or sweep recorded in `folder` into `folder`, with the
    overrides in `rest` added (they win)."""
    where = ("resume", str(folder / COMMAND_FILE))
    try:
        command = json.loads((folder / COMMAND_FILE).read_text())
    except FileNotFoundError:
        raise ConfigError(
            "resume", str(folder), f"a run or sweep folder made by sda.run (no {COMMAND_FILE} in it)"
        ) from None
    except (OSError, ValueError) as error:
        raise ConfigError("resume", str(folder), f"a readable {COMMAND_FILE} ({error})") from None
    if not isinstance(command, dict) or command.get("format_version") != COMMAND_FORMAT_VERSION:
        raise _refused(where, f"it is not a command record of format {COMMAND_FORMAT_VERSION}")
    unknown = sorted(set(command) - {"format_version", "multirun", "overrides", "launcher", "source_files", "models"})
    if unknown:
        raise _refused(where, f"{unknown[0]!r} is not part of a recorded command (refused)")
    overrides = command.get("overrides")
    if not isinstance(overrides, list):
        raise _refused(where, "its overrides must be a list of strings")
    for text in overrides:
        _check_recorded_override(text, where)
    check_source_files(command.get("source_files"), where, "the run started")
    launcher = _launcher_overrides(command.get("launcher"), where)
    flags = [token for token in rest if token.startswith("-")]
    if set(flags) - {"-m", "--multirun"}:
        raise ConfigError("resume", str(folder), f"only overrides may follow it; got {' '.join(flags)}")
    multirun = bool(command.get("multirun"))
    rest = [t for t in rest if t not in flags]
    given = _given(rest)
    if not given & {"model", "model.checkpoint"}:  # naming a model on the command line chooses it
        check_models(command.get("models"), where)
    where_to = override_text("hydra.sweep.dir" if multirun else "hydra.run.dir", str(folder.absolute()))
    return [
        *(["-m"] if multirun else []),
        *_without_given(launcher, given),
        where_to,
        *_without_given(overrides, given),
        *rest,
    ]


def _launcher_overrides(launcher: Any, where: tuple[str, str]) -> list[str]:
    if not isinstance(launcher, dict) or set(launcher) - {"name", "parameters"}:
        raise _refused(where, "its launcher must be a name and parameters")
    name = launcher.get("name")
    if name not in LAUNCHERS:
        raise _refused(where, f"launcher {name!r} is not one of {', '.join(LAUNCHERS)} (refused)")
    texts = [] if name == "basic" else [f"hydra/launcher={name}"]
    parameters = launcher.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _refused(where, "its launcher parameters must be a mapping")
    for key, value in parameters.items():
        if key not in LAUNCHER_PARAMETERS:
            raise _refused(where, f"hydra.launcher.{key} is not a launcher parameter sda replays (refused)")
        if isinstance(value, bool) or not (isinstance(value, (int, float)) or _SAFE_NAME.match(str(value))):
            raise _refused(where, f"hydra.launcher.{key}={value!r} is not a number or a short name (refused)")
        texts.append(override_text(f"hydra.launcher.{key}", value))
    return texts


# ---------------------------------------------------------------------------------------------
# The command line


def expand_command_line(argv: Sequence[str]) -> list[str]:
    """`resume=PATH` and `reproduce=SIDECAR` turned into the plain Hydra command line they mean."""
    argv = list(argv)
    args = parse_command_line(argv)
    resume = [o for o in args.overrides if o.split("=", 1)[0] == "resume"]
    if resume:
        if len(resume) > 1:
            raise ConfigError("resume", " ".join(resume), "one folder")
        if args.config_dir or args.config_name or getattr(args, "config_path", None):
            raise ConfigError("resume", resume[0], "no --config-dir/--config-name: the folder's record says it all")
        folder = Path(str(parse_overrides(resume)[0].value())).expanduser()
        argv = resume_command(folder, [t for t in argv if t != resume[0]])
        args = parse_command_line(argv)
    reproduce = [o for o in parse_overrides(args.overrides) if o.key_or_group == "reproduce"]
    if reproduce:
        if len(reproduce) > 1 or reproduce[0].is_sweep_override():
            raise ConfigError("reproduce", reproduce[-1].get_value_element_as_str(), "one sidecar per run (not swept)")
        path = Path(str(reproduce[0].value())).expanduser()
        record = read_reproduce_sidecar(path)
        kept = [o for o in args.overrides]
        argv = [t for t in argv if t not in args.overrides] + reproduce_overrides(record, kept, str(path))
    return argv


# ---------------------------------------------------------------------------------------------
# After a reproduce= job: did it make the same output?


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested records."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix[:-1]]


def reproduction_promise(original: dict[str, Any], device: str) -> str:
    """One line on what reproducing this sidecar here promises (the determinism contract)."""
    made_with = original.get("numerics") or {}
    bound = expected_agreement(made_with, numerics_status(resolve_device(device)))
    if bound is None:
        return "the original was made on a pinned CPU, as this run is: expect the same bytes"
    where = made_with.get("gpu") or made_with.get("device_kind") or "an unrecorded device"
    return (
        f"the original was made on {where}, this run on {device}: expect the same sound, not the same bytes ({bound})"
    )


def compare_with_original(original: dict[str, Any], original_path: Path, made: dict[str, Any], made_path: Path) -> None:
    """Log whether a reproduce= job made the output its sidecar describes; where the bytes
    differ, measure by how much when the original audio sits beside its sidecar."""
    made_name = made["file"]["name"]
    changed = differences(original.get("identity_parameters", {}), made.get("identity_parameters", {}))
    name = original.get("file", {}).get("name", "the original")
    if changed:
        level = logging.WARNING if "checkpoint_sha256" in changed else logging.INFO
        log.log(level, "%s differs from %s in %s", made_name, name, ", ".join(changed))
        return
    if made.get("file", {}).get("sha256") == original.get("file", {}).get("sha256"):
        log.info("reproduced %s exactly: %s has the same identity and audio bytes", name, made_name)
        return
    bound = expected_agreement(original.get("numerics"), made.get("numerics") or {})
    measured = _measured_difference(made_path.parent / made_name, original_path.parent / name)
    if bound is None:
        log.warning("%s: same identity as %s, other bytes (%s); other library versions?", made_name, name, measured)
    else:
        log.info(
            "%s: same identity as %s, other bytes as the contract allows (%s; %s)", made_name, name, bound, measured
        )


def _measured_difference(made: Path, original: Path) -> str:
    try:
        a, _ = sf.read(str(made), dtype="float32", always_2d=True)
        b, _ = sf.read(str(original), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError):
        return "the original audio is not beside its sidecar to measure"
    if a.shape != b.shape:
        return f"shapes differ: {a.shape} and {b.shape}"
    x, y = torch.from_numpy(a.T.copy()), torch.from_numpy(b.T.copy())
    return f"measured {peak_difference_dbfs(x, y):.1f} dBFS peak, {log_spectral_distance_db(x, y):.3f} dB log-spectral"
