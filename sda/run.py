"""`python -m sda.run [overrides]`: compose the config, validate it, generate, export.

    python -m sda.run stereo=dual_seed export.sample_rate=96000
    python -m sda.run -m seed='range(0,8)' chunking=crossfade,latent_interp
    python -m sda.run --config-dir jobs --config-name overnight     # a named job, see jobs/README.md
    python -m sda.run resume=outputs/2026-11-24/23-19-26           # finish an interrupted run or sweep
    python -m sda.run reproduce=outputs/.../gen_20261124T231934Z_seed7.json [overrides]

Before Hydra starts the first job, every point of a sweep is validated (exit status 2 and one
line on a bad value), and the output folder is checked: it can be written, and its disk has room
for the whole run or sweep (exit status 1). Hydra then runs the jobs; the exit status is 1 if
any output or job failed.

Resume: a job skips the outputs in its folder that verify against their sidecars, so the same
command run into the same folder makes only what is missing or broken (`hydra.run.dir=PATH`, or
`-m ... hydra.sweep.dir=PATH`). `resume=PATH` does that for you: it replays the command stored
in PATH (`.hydra/` of a run, `multirun.yaml` of a sweep) into PATH; overrides after it are added.

Reproduce: `reproduce=SIDECAR.json` turns what the sidecar records (the seed, and every
parameter that decides the audio) into overrides with `count=1`; overrides on the command line
win. With the same model and no overrides the audio is bit-identical on the CPU.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from sda.callbacks import RunStatus
from sda.cli import config_name_of, fail, is_info_request, parse_command_line, plan
from sda.config import RunConfig, register_configs, to_run_config, with_seed
from sda.errors import ConfigError, SdaError
from sda.model import resolve_checkpoint
from sda.outputs import read_sidecar
from sda.runner import JobOutcome, check_output_folder, estimate_output_bytes, run_job, write_outcome

log = logging.getLogger("sda.run")
register_configs()

# Recorded in a sidecar's config but not carried over by reproduce=: they decide how the audio is
# computed, not what it is (and the device of another machine may not exist here).
NOT_REPRODUCED = ("device", "batch_size", "seed", "count")
# Replayed by resume= from the stored Hydra overrides except these, which resume= sets itself.
RESUME_SETS = ("hydra.mode", "hydra.run.dir", "hydra.sweep.dir")


def run_from_hydra(cfg: DictConfig) -> None:
    """The body of a Hydra job: validate, then run_job into Hydra's output folder. Never raises
    and never exits for a failed job: its outcome.json says what happened."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    extra: dict[str, Any] = {
        "hydra": {
            "overrides": overrides,
            "job_num": hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None,
            "output_dir": str(output_dir),
            "choices": dict(hydra_cfg.runtime.choices),
        },
        # The audio's last bits can depend on the CPU thread count: worth knowing to reproduce it.
        "torch_threads": torch.get_num_threads(),
    }
    try:
        config = to_run_config(cfg)
        original = read_sidecar(Path(config.reproduce)) if config.reproduce else None
    except (SdaError, OSError, ValueError) as error:  # pre-flight makes this unreachable from the command line
        log.error("%s", error)
        write_outcome(JobOutcome(output_dir=str(output_dir), error=str(error), overrides=overrides))
        return
    if original is not None:
        extra["reproduced_from"] = {
            "sidecar": str(Path(config.reproduce).absolute()),
            "identity": original.get("identity"),
            "sha256": original.get("file", {}).get("sha256"),
        }
    outcome = run_job(config, output_dir, base_dir=Path(get_original_cwd()), overrides=overrides, extra_sidecar=extra)
    if original is not None:
        _compare_with_original(original, outcome)


def _compare_with_original(original: dict[str, Any], outcome: JobOutcome) -> None:
    """Log whether a reproduce= run made the same output as the sidecar it started from."""
    for item in outcome.items:
        if item.sidecar is None:
            continue
        made = read_sidecar(Path(outcome.output_dir) / item.sidecar)
        differences = _differences(original.get("identity_parameters", {}), made.get("identity_parameters", {}))
        name = original.get("file", {}).get("name", "the original")
        if differences:
            level = logging.WARNING if "checkpoint_sha256" in differences else logging.INFO
            log.log(level, "%s differs from %s in %s", item.file, name, ", ".join(differences))
        elif made["file"]["sha256"] == original.get("file", {}).get("sha256"):
            log.info("reproduced %s exactly: %s has the same identity and audio bytes", name, item.file)
        else:
            log.warning(
                "%s has the identity of %s but other audio bytes (made in a batch of another size, with "
                "another thread count, on another device or with other library versions?)",
                item.file,
                name,
            )


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix[:-1]]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _parse(overrides: Sequence[str]) -> list[Any]:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise ConfigError(f"cannot parse the command line: {str(error).splitlines()[0]}") from None


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
        if _parse([plain])[0].value() == text:
            return plain
    except ConfigError:
        pass
    return f"{key}='" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def reproduce_overrides(record: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """The overrides that make again the output a sidecar describes, followed by `overrides`.
    A key given in `overrides` replaces the sidecar's value; a config group given there
    (`stereo=mid_side`) replaces the sidecar's whole group."""
    try:
        config, seed = dict(record["config"]), int(record["seed"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            "reproduce",
            record.get("file", {}).get("name", "?"),
            "a sidecar written by sda.run (no config or seed in it)",
        ) from None
    recorded = {"seed": seed, "count": 1, **_flatten({k: v for k, v in config.items() if k not in NOT_REPRODUCED})}
    given = {override.key_or_group for override in _parse(overrides)}

    def given_on_command_line(key: str) -> bool:
        return any(key == g or key.startswith(f"{g}.") for g in given)

    return [override_text(k, v) for k, v in recorded.items() if not given_on_command_line(k)] + list(overrides)


def resume_command(folder: Path, rest: Sequence[str]) -> list[str]:
    """The command line that reruns the run or sweep stored in `folder` into `folder`, with the
    overrides in `rest` added. A sweep folder holds multirun.yaml; a run folder .hydra/hydra.yaml."""
    if (folder / "multirun.yaml").is_file():
        multirun, stored = True, OmegaConf.load(folder / "multirun.yaml")
    elif (folder / ".hydra" / "hydra.yaml").is_file():
        multirun, stored = False, OmegaConf.load(folder / ".hydra" / "hydra.yaml")
    else:
        raise ConfigError(
            "resume", str(folder), "a run folder (with .hydra/) or a sweep folder (with multirun.yaml) made by sda.run"
        )
    flags = [token for token in rest if token.startswith("-")]
    if set(flags) - {"-m", "--multirun"}:
        raise ConfigError(
            "resume",
            str(folder),
            f"only overrides may follow it (it replays the stored command); got {' '.join(flags)}",
        )
    command = ["-m"] if multirun else []
    name = OmegaConf.select(stored, "hydra.job.config_name")
    if name and name != "config":
        command += ["--config-name", str(name)]
    for source in OmegaConf.select(stored, "hydra.runtime.config_sources") or []:
        if source.get("provider") == "command-line":
            command += ["--config-dir", str(source.path)]
    stored_hydra = [
        o for o in OmegaConf.select(stored, "hydra.overrides.hydra") or [] if o.split("=", 1)[0] not in RESUME_SETS
    ]
    where = override_text("hydra.sweep.dir" if multirun else "hydra.run.dir", str(folder.absolute()))
    command += [*stored_hydra, where, *([] if multirun else ["hydra.mode=RUN"])]
    return command + list(OmegaConf.select(stored, "hydra.overrides.task") or []) + [t for t in rest if t not in flags]


def expand_command_line(argv: Sequence[str]) -> list[str]:
    """`resume=PATH` and `reproduce=SIDECAR` turned into the plain Hydra command line they mean."""
    argv = list(argv)
    args = parse_command_line(argv)
    resume = [o for o in args.overrides if o.startswith("resume=")]
    if resume:
        if len(resume) > 1:
            raise ConfigError("resume", " ".join(resume), "one folder")
        folder = Path(_parse(resume)[0].value()).expanduser()
        argv = resume_command(folder, [t for t in argv if t != resume[0]])
        args = parse_command_line(argv)
    reproduce = [o for o in _parse(args.overrides) if o.key_or_group == "reproduce"]
    if reproduce:
        if len(reproduce) > 1 or reproduce[0].is_sweep_override():
            raise ConfigError(
                "reproduce", reproduce[-1].get_value_element_as_str(), "one sidecar per run (it cannot be swept)"
            )
        path = Path(str(reproduce[0].value())).expanduser()
        try:
            record = read_sidecar(path)
        except FileNotFoundError:
            raise ConfigError(
                "reproduce", str(path), "the path of an output's sidecar .json (file not found)"
            ) from None
        except (OSError, ValueError) as error:
            raise ConfigError("reproduce", str(path), f"an output's sidecar .json ({error})") from None
        argv = [t for t in argv if t not in args.overrides] + reproduce_overrides(record, args.overrides)
    return argv


def check_before_running(argv: Sequence[str]) -> None:
    """Pre-flight: validate every point, check that each checkpoint exists (no model is loaded),
    then that the output folder can hold the whole run or sweep."""
    args = parse_command_line(argv)
    if getattr(args, "config_path", None):
        raise ConfigError(
            "--config-path", args.config_path, "not supported by sda.run; use --config-dir to add a folder of configs"
        )
    found = plan(
        config_name_of(args, "config"),
        args.overrides,
        args.multirun,
        RunConfig,
        to_run_config,
        fast_keys={"seed": with_seed},
        config_dir=args.config_dir,
    )
    for checkpoint in sorted({config.model.checkpoint for config in found.configs}):
        path = resolve_checkpoint(checkpoint, Path.cwd())
        if not path.is_file():
            raise ConfigError(
                "model.checkpoint", checkpoint, f"a model name or checkpoint file ({path} does not exist)"
            )
    check_output_folder(found.output_dir, sum(estimate_output_bytes(config) for config in found.configs))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    run_from_hydra(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not is_info_request(parse_command_line(argv)):
            argv = expand_command_line(argv)
            check_before_running(argv)
    except SdaError as error:
        fail(error)
    sys.argv = [sys.argv[0], *argv]
    _hydra_main()
    sys.exit(RunStatus.exit_code)


if __name__ == "__main__":
    main()
