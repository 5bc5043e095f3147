"""`python -m sda.run [overrides]`: compose the config, validate it, generate, export.

    python -m sda.run stereo=dual_seed export.sample_rate=96000
    python -m sda.run -m seed='range(0,8)' chunking=crossfade,latent_interp
    python -m sda.run --config-dir jobs --config-name overnight     # a named job, see jobs/README.md
    python -m sda.run resume=outputs/2026-11-24/23-19-26           # finish an interrupted run or sweep
    python -m sda.run reproduce=outputs/.../gen_20261124T231934Z_seed7.json [overrides]

Before Hydra starts the first job, every point of a sweep is validated (exit status 2 and one
line on a bad value), each checkpoint must exist, every source file of every point must be
readable audio with sound in it, at least one model window long, the output folder must be
writable with room for the whole run or sweep, and no other sda process may be writing into it
(exit status 1).
This process then locks the folder, records its command there (sda.replay), runs Hydra, and ends
with one summary line (sda.summary); the exit status is 1 if any output or job failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from sda.config import RunConfig, register_configs, to_run_config
from sda.entry import config_name_of, fail, is_info_request, parse_command_line
from sda.errors import ConfigError, SdaError
from sda.locking import check_unlocked, folder_lock
from sda.model import resolve_checkpoint
from sda.outputs import read_sidecar
from sda.preflight import Plan, plan
from sda.replay import (
    compare_with_original,
    expand_command_line,
    recorded_command,
    reproduction_promise,
    write_command,
)
from sda.runner import JobOutcome, check_output_folder, estimate_output_bytes, run_job, write_outcome
from sda.sources import preflight_sources
from sda.summary import finish_run

log = logging.getLogger("sda.run")
register_configs()

# Which launch of sda.run a job belongs to: set by main, inherited by every launcher's workers.
RUN_TOKEN_ENV = "SDA_RUN_TOKEN"
# Launchers whose jobs run on this machine: pre-flight checks their device here. A Slurm job's
# device is checked on its node, when the job resolves it.
LOCAL_LAUNCHERS = ("basic", "joblib", "submitit_local")


def run_from_hydra(cfg: DictConfig) -> None:
    """The body of a Hydra job: validate, then run_job into Hydra's output folder. Never raises
    and never exits for a failed job: its outcome.json says what happened."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    job_num = hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None
    token = os.environ.get(RUN_TOKEN_ENV)
    extra: dict[str, Any] = {
        "hydra": {
            "overrides": overrides,
            "job_num": job_num,
            "output_dir": str(output_dir),
            "choices": dict(hydra_cfg.runtime.choices),
        },
    }
    try:
        config = to_run_config(cfg)
        original = read_sidecar(Path(config.reproduce)) if config.reproduce else None
    except (SdaError, OSError, ValueError) as error:  # pre-flight makes this unreachable from the command line
        log.error("%s", error)
        write_outcome(
            JobOutcome(str(output_dir), error=str(error), overrides=overrides, run_token=token, job_num=job_num)
        )
        return
    if original is not None:
        extra["reproduced_from"] = {
            "sidecar": str(Path(config.reproduce).absolute()),
            "identity": original.get("identity"),
            "sha256": original.get("file", {}).get("sha256"),
        }
        log.info("reproducing %s: %s", Path(config.reproduce).name, reproduction_promise(original, config.device))
    outcome = run_job(config, output_dir, Path(get_original_cwd()), overrides, extra, run_token=token, job_num=job_num)
    if original is not None:
        for item in outcome.items:
            if item.sidecar is not None:
                made = read_sidecar(output_dir / item.sidecar)
                compare_with_original(original, Path(config.reproduce), made, output_dir / item.sidecar)


def preflight(argv: list[str]) -> tuple[Plan, list[str]]:
    """Validate every point, check that each checkpoint exists (no model is loaded), that the
    output folder can hold the whole run or sweep and that no other process writes into it.
    Returns the plan and the command line for Hydra, with the output folder pinned."""
    args = parse_command_line(argv)
    if getattr(args, "config_path", None):
        raise ConfigError(
            "--config-path", args.config_path, "not supported; use --config-dir to add a folder of configs"
        )
    found = plan(
        config_name_of(args, "config"), args.overrides, RunConfig, to_run_config, args.multirun, args.config_dir
    )
    for checkpoint in sorted({config.model.checkpoint for config in found.compositions.values()}):
        path = resolve_checkpoint(checkpoint, Path.cwd())
        if not path.is_file():
            raise ConfigError(
                "model.checkpoint", checkpoint, f"a model name or checkpoint file ({path} does not exist)"
            )
    preflight_sources(found.compositions.values(), Path.cwd())
    if _launcher(found) in LOCAL_LAUNCHERS:  # jobs run on this machine: its devices must exist
        for config in found.compositions.values():
            config.resolved_device()
    needed = sum(estimate_output_bytes(config) * jobs for config, jobs in found.each_composition())
    check_output_folder(found.output_dir, needed)
    if found.output_dir_exact:
        check_unlocked(found.output_dir)
    return found, [*argv, *found.pinned_output_dir()]


def _launcher(found: Plan) -> str:
    choices = OmegaConf.select(found.hydra, "runtime.choices") if found.hydra is not None else None
    return str(choices["hydra/launcher"]) if choices else "basic"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    run_from_hydra(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_command_line(argv)
    if is_info_request(args):
        if args.multirun:  # Hydra would raise a ValueError with a traceback
            fail(
                ConfigError(
                    "-m", "--multirun", "not with --cfg, --info, --help or --resolve: they show one job's config"
                )
            )
        sys.argv = [sys.argv[0], *argv]
        _hydra_main()
        return
    try:
        argv = expand_command_line(argv)
        found, argv = preflight(argv)
    except SdaError as error:
        fail(error)
    token = uuid.uuid4().hex
    os.environ[RUN_TOKEN_ENV] = token
    sys.argv = [sys.argv[0], *argv]
    try:
        with folder_lock(found.output_dir) if found.output_dir_exact else contextlib.nullcontext():
            if found.output_dir_exact:
                write_command(found.output_dir, recorded_command(found))
            _hydra_main()
            status = finish_run(found.output_dir, found.multirun, token, found.jobs)
    except SdaError as error:
        fail(error)
    sys.exit(status)


if __name__ == "__main__":
    main()
