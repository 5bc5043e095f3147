"""`python -m sda.train dataset.path=DIR name=NAME` (or `dataset=demo`): train a model.

The model is written to `models/NAME.pt` (relative to the folder the command runs in, or
`models_dir=...`). Logs go to `outputs/train/NAME/<date>/<time>/`.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from sda.config import TrainConfig, register_configs, to_train_config
from sda.entry import record_job_status, single_run_main
from sda.errors import SdaError
from sda.training import train_model

log = logging.getLogger("sda.train")
register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = to_train_config(cfg)
        command = "python -m sda.train " + " ".join(shlex.quote(o) for o in HydraConfig.get().overrides.task)
        result = train_model(config, base_dir=get_original_cwd(), command=command.strip())
    except SdaError as error:
        log.error("%s", error)
        record_job_status(run_dir, error)
        return
    log.info("%s", result.summary())
    print(result.model_path)
    record_job_status(run_dir, None)


def main() -> None:
    single_run_main("sda.train", "train", TrainConfig, to_train_config, _hydra_main)


if __name__ == "__main__":
    main()
