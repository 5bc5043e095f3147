"""`python -m sda.run [overrides]`: compose the config, validate it, generate, export.

    python -m sda.run stereo=dual_seed export.sample_rate=96000
    python -m sda.run -m seed='range(0,8)' chunking=crossfade,latent_interp

Every point of a sweep is validated before the first job starts (exit status 2 and one line on a
bad value); Hydra then runs the jobs; the exit status is 1 if any output or job failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from sda.callbacks import RunStatus
from sda.cli import fail, is_info_request, parse_command_line, preflight
from sda.config import RunConfig, register_configs, to_run_config, with_seed
from sda.errors import SdaError
from sda.runner import run_job

log = logging.getLogger("sda.run")
register_configs()


def run_from_hydra(cfg: DictConfig) -> None:
    """The body of a Hydra job: validate, then run_job into Hydra's output folder."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    extra: dict[str, Any] = {
        "hydra": {
            "overrides": overrides,
            "job_num": hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None,
            "output_dir": str(output_dir),
            "choices": dict(hydra_cfg.runtime.choices),
        }
    }
    try:
        config = to_run_config(cfg)
    except SdaError as error:  # pre-flight makes this unreachable from the command line
        log.error("%s", error)
        raise
    run_job(config, output_dir, base_dir=Path(get_original_cwd()), overrides=overrides, extra_sidecar=extra)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    run_from_hydra(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_command_line(argv)
    if not is_info_request(args):
        try:
            preflight("config", args.overrides, args.multirun, RunConfig, to_run_config, fast_keys={"seed": with_seed})
        except SdaError as error:
            fail(error)
    sys.argv = [sys.argv[0], *argv]
    _hydra_main()
    sys.exit(RunStatus.exit_code)


if __name__ == "__main__":
    main()
