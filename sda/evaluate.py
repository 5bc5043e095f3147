"""`python -m sda.evaluate model.checkpoint=... dataset.path=...`: a model's figures next to two
baselines and two real-data references (see sda.evaluation); `suite=dev` does it for every corpus
of conf/suite/dev.yaml in one run. Prints a table, writes JSON.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from sda.config import EvaluateConfig, register_configs, to_evaluate_config
from sda.entry import record_job_status, single_run_main
from sda.errors import SdaError
from sda.evaluation import evaluate_model, evaluate_suite
from sda.files import write_json_atomic

log = logging.getLogger("sda.evaluate")
register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    base_dir = Path(get_original_cwd())
    try:
        config = to_evaluate_config(cfg)
        evaluation = evaluate_suite(config, base_dir) if config.suite.corpora else evaluate_model(config, base_dir)
    except SdaError as error:
        log.error("%s", error)
        record_job_status(Path(HydraConfig.get().runtime.output_dir), error)
        return
    output = Path(config.output) if config.output else Path(HydraConfig.get().runtime.output_dir) / "evaluation.json"
    output = output if output.is_absolute() else base_dir / output
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, evaluation.to_dict(), replace=True)
    print(evaluation.table())
    print(f"written to {output}")
    record_job_status(Path(HydraConfig.get().runtime.output_dir), None)


def main() -> None:
    single_run_main("sda.evaluate", "evaluate", EvaluateConfig, to_evaluate_config, _hydra_main)


if __name__ == "__main__":
    main()
