"""`python -m sda.run [overrides]`: compose the config, validate it, generate, export.

    python -m sda.run stereo=dual_seed export.sample_rate=96000
    python -m sda.run -m seed='range(0,8)' chunking=crossfade,latent_interp
    python -m sda.run --config-dir jobs --config-name overnight     # a named job, see jobs/README.md
    python -m sda.run resume=outputs/2026-11-24/23-19-26           # finish an interrupted run or sweep
    python -m sda.run reproduce=outputs/.../gen_20261124T231934Z_seed7.json [overrides]
    python -m sda.run count=2000 stereo=dual_seed export.sample_rate=96000 dry_run=true

Before Hydra starts the first job, every point of a sweep is validated (exit status 2 and one
line on a bad value), each checkpoint must exist, every source file of every point must be
readable audio with sound in it, at least one model window long, the output folder must be
writable with room for the whole run or sweep, and no other sda process may be writing into it
(exit status 1).
This process then locks the folder, records its command there (sda.replay), prints the plan
(files, audio hours, disk, and the wall time estimated from this device's measured throughput:
sda.estimate), runs Hydra, and ends with one summary line (sda.summary); the exit status is 1 if
any output or job failed. `dry_run=true` prints the plan and exits 0: nothing is rendered, no
folder is made or written. summary.json records where the run's time went (`timings_s`), and a
run of one kind of output long enough to measure records its throughput for later estimates.

SIGINT and SIGTERM (sda.interruption) are handled in this process, where the basic launcher runs
its jobs, and in each job's process under the joblib and submitit launchers: the item in flight
is abandoned (an output being written is finished), the job's outcome.json and the run's
summary.json and report say `interrupted`, and the process ends with one line and exit status 130
(SIGINT) or 143 (SIGTERM). `resume=FOLDER` continues the run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from sda import interruption
from sda.config import RunConfig, register_configs, to_run_config
from sda.entry import config_name_of, exit_now, fail, is_info_request, parse_command_line
from sda.errors import ConfigError, OutputError, SdaError
from sda.estimate import PlanPart, plan_lines, record_run
from sda.interruption import Interrupted
from sda.locking import check_unlocked, folder_lock
from sda.model import missing_checkpoint_message, resolve_checkpoint
from sda.outputs import SIDECAR_GLOB, SUMMARY_FILE, check_sidecar_format, read_sidecar
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
    and never exits for a failed job: its outcome.json says what happened.

    SIGINT and SIGTERM: in the launching process (basic launcher), `Interrupted` is raised after
    the job has recorded its outcome, so that Hydra starts no further job. In a launcher's worker
    process the job records its outcome and returns; the launching process learns of it from
    outcome.json (and stops on its own signal, when the signal reached it too)."""
    if interruption.active():  # the launching process: main() handles the signals
        _run_job_from_hydra(cfg)
        if interruption.received() is not None:
            raise Interrupted(interruption.received())
        return
    with interruption.handling_signals(second_ends_at_once=False), _quiet_logging_errors():
        try:
            _run_job_from_hydra(cfg)
        except Interrupted:  # before or after run_job, which records its own interruption
            log.warning("interrupted outside the job's work: %s", HydraConfig.get().runtime.output_dir)


@contextlib.contextmanager
def _quiet_logging_errors() -> Iterator[None]:
    """On a full disk Hydra's run.log cannot be written, and each log line would print a
    traceback; the console still gets every line."""
    previous = logging.raiseExceptions
    logging.raiseExceptions = False
    try:
        yield
    finally:
        logging.raiseExceptions = previous


def _run_job_from_hydra(cfg: DictConfig) -> JobOutcome:
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
        outcome = JobOutcome(str(output_dir), error=str(error), overrides=overrides, run_token=token, job_num=job_num)
        write_outcome(outcome)
        return outcome
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
    return outcome


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
        if not resolve_checkpoint(checkpoint, Path.cwd()).is_file():
            raise ConfigError("model.checkpoint", checkpoint, missing_checkpoint_message(checkpoint, Path.cwd()))
    preflight_sources(found.compositions.values(), Path.cwd())
    if _launcher(found) in LOCAL_LAUNCHERS:  # jobs run on this machine: its devices must exist
        for config in found.compositions.values():
            config.resolved_device()
    needed = sum(estimate_output_bytes(config) * jobs for config, jobs in found.each_composition())
    check_output_folder(found.output_dir, needed)
    check_sidecar_format(found.output_dir)
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
    # What the imports made (torch's and Hydra's object graphs) lives as long as the process: out
    # of the garbage collector's sight, its collections stay short and the interpreter's exit
    # takes 0.3 s instead of 1 s (measured on the 2-core CPU).
    gc.freeze()
    with interruption.handling_signals(), _quiet_logging_errors():
        status = _launch(argv)
    sys.exit(status)


def _launch(argv: list[str]) -> int:
    """Pre-flight, lock, record the command, print the plan, run Hydra, finish; the exit status."""
    where = "the output folder"
    timings: dict[str, float] = {"main_started_unix": time.time()}
    started = time.perf_counter()
    try:
        argv = expand_command_line(argv)
        found, argv = preflight(argv)
        timings["preflight_s"] = time.perf_counter() - started
        where = str(found.output_dir)
        if any(config.dry_run for config in found.compositions.values()):
            _print_plan(found)
            print("sda: dry run: nothing rendered, nothing written", file=sys.stderr)
            return 0
        token = uuid.uuid4().hex
        os.environ[RUN_TOKEN_ENV] = token
        sys.argv = [sys.argv[0], *argv]
        with folder_lock(found.output_dir) if found.output_dir_exact else contextlib.nullcontext():
            if found.output_dir_exact:
                with interruption.deferred():
                    write_command(found.output_dir, recorded_command(found))
            _print_plan(found)
            hydra_started = time.perf_counter()
            stop, launcher_error = _run_hydra(OmegaConf.select(found.hydra, "mode") if found.hydra else None)
            timings["hydra_s"] = time.perf_counter() - hydra_started
            with interruption.deferred(raise_at_end=False):  # the ending is written whole
                items = sum(config.count * jobs for config, jobs in found.each_composition())
                status = finish_run(
                    found.output_dir,
                    found.multirun,
                    token,
                    found.jobs,
                    expected_items=items,
                    interrupted=stop.signal_name if stop else None,
                    launcher_error=launcher_error,
                    timings_s=timings,
                )
                if status == 0:
                    _record_throughput(found, time.perf_counter() - started, timings["hydra_s"])
                return status
    except SdaError as error:
        fail(error)
    except OSError as error:  # sda's own files are written through sda.files; this is the lock's pid
        fail(OutputError(f"cannot write into {where}: {error.strerror or error}"))
    except Interrupted as stop:  # before Hydra started: no job ran, nothing was made
        print(f"sda: {stop} before the run started; nothing was made", file=sys.stderr)
        return stop.exit_status


def _plan_parts(found: Plan) -> list[PlanPart]:
    return [PlanPart(config, jobs) for config, jobs in found.each_composition()]


def _print_plan(found: Plan) -> None:
    """The plan and its time estimate, on stderr with the run's log (see sda.estimate)."""
    local = _launcher(found) in LOCAL_LAUNCHERS
    needed = sum(estimate_output_bytes(config) * jobs for config, jobs in found.each_composition())
    lines = plan_lines(_plan_parts(found), needed, lambda config: config.resolved_device() if local else None)
    if not found.multirun and found.output_dir.is_dir():
        present = sum(1 for _ in found.output_dir.glob(SIDECAR_GLOB))
        if present:
            lines[0] += f"; {present} output(s) already in the folder are checked and skipped when they verify"
    for line in lines:
        print(line, file=sys.stderr, flush=True)


def _record_throughput(found: Plan, wall_s: float, jobs_s: float) -> None:
    """A run of one kind of output on this machine records its throughput (sda.estimate)."""
    parts = _plan_parts(found)
    if len(parts) != 1 or _launcher(found) not in LOCAL_LAUNCHERS or not found.output_dir_exact:
        return
    try:
        done = int(json.loads((found.output_dir / SUMMARY_FILE).read_text())["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    config = parts[0].config
    record_run(config.resolved_device(), config, done, wall_s, jobs_s)


@contextlib.contextmanager
def _known_run_mode(mode: RunMode | None) -> Iterator[None]:
    """Hydra answers the run mode pre-flight already read.

    Before it runs, Hydra composes the whole config once only to read `hydra.mode` (its
    `Hydra.get_mode`), then composes it again for the run: on the 2-core CPU a composition costs
    about 0.1 s. Pre-flight composed the same config and overrides and read the same key, so
    Hydra is handed that value instead (None: the config sets no mode, and `-m` decides, as in
    Hydra). Where a Hydra release has no such method, nothing is replaced."""
    from hydra._internal.hydra import Hydra

    original = getattr(Hydra, "get_mode", None)
    if original is None:
        yield
        return
    Hydra.get_mode = lambda self, config_name, overrides: mode  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.get_mode = original  # type: ignore[method-assign]


def _run_hydra(mode: RunMode | None = None) -> tuple[Interrupted | None, str | None]:
    """Run Hydra (`mode`: the config's `hydra.mode`, read by pre-flight); (the interruption that
    stopped it, one line on why its launcher failed)."""
    # Hydra prints a traceback and exits for an exception from its own code (a job's config that
    # cannot be saved on a full disk, a launcher's worker killed): raised instead, it is caught
    # here and the run still ends with its summary.
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with _known_run_mode(mode):
            _hydra_main()
    except Interrupted as stop:
        return stop, None
    except Exception as error:  # whatever stopped the launcher, the jobs' outcomes are summed up
        text = str(error).strip().splitlines()
        return None, f"{type(error).__name__}: {text[0] if text else ''}"
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
    return None, None


if __name__ == "__main__":
    exit_now(main)
