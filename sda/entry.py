"""What the `python -m` entry points share: reading the command line as Hydra does, failing in
one line, and the main of a command that runs one job (sda.train, sda.evaluate)."""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Hydra has no public way to parse its command line: `@hydra.main` builds this parser internally.
# Pre-flight must read the arguments exactly as Hydra will, so it uses the same parser.
from hydra._internal.utils import get_args_parser

from sda.errors import SdaError
from sda.files import write_json_atomic
from sda.preflight import plan

# Flags after which Hydra only prints something: nothing to validate or run.
_INFO_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "resolve")


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


def exit_now(main: Callable[[], None]) -> typing.NoReturn:
    """Run a command's `main` as `python -m` does, then leave the process at once.

    Everything a command wrote has reached the kernel by then (sda.files also fsyncs); what an exit
    adds is the interpreter's teardown of every module (torch's above all): 0.2 s after a run on
    the 2-core CPU, 0.8 s without `gc.freeze()`. So the exit runs the atexit handlers (logging's
    flush of Hydra's run log), flushes stdout and stderr, and ends with `os._exit` and main's
    status. Where a thread that is not a daemon still runs (a launcher's: joblib's loky ends its
    own only from the interpreter's shutdown), or a profiler or tracer watches, the exit is the
    interpreter's usual one. Only for `__main__`: called in-process (tests, a user's script),
    `main` raises SystemExit as usual."""
    try:
        main()
        status: object = 0
    except SystemExit as stop:
        status = stop.code
    launcher_thread = any(
        t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()
    )
    # A profiler, tracer or debugger (cProfile, coverage, pdb) writes or reports what it saw after
    # main returns, from code a quick exit would skip.
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if launcher_thread or watched:
        sys.exit(status)
    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status
    else:  # sys.exit("message"): Python prints it and exits with 1
        print(status, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


# A single-job command's job records how it ended here, in its run folder; `single_run_main`
# reads it back after Hydra returns (Hydra does not hand a job's result to its caller).
JOB_STATUS_FILE = "status.json"


def record_job_status(folder: Path, error: SdaError | None) -> None:
    """Written by the job of sda.train / sda.evaluate at its end."""
    status = {"ok": error is None, "error": str(error) if error else None, "exit_code": error.exit_code if error else 0}
    write_json_atomic(folder / JOB_STATUS_FILE, status, replace=True)


def single_run_main(
    command: str, config_name: str, schema: type, convert: Callable[[Any], Any], hydra_main: Callable[[], None]
) -> None:
    """The `main` of an entry point that runs one job (sda.train, sda.evaluate): pre-flight the
    command line, run Hydra, exit with the status the job recorded in its run folder."""
    args = parse_command_line(sys.argv[1:])
    if is_info_request(args):
        hydra_main()
        return
    try:
        if args.multirun:
            raise SdaError(f"{command} runs one job at a time; drop -m/--multirun")
        found = plan(config_name, args.overrides, schema, convert, config_dir=args.config_dir)
    except SdaError as error:
        fail(error)
    sys.argv = [sys.argv[0], *sys.argv[1:], *found.pinned_output_dir()]
    hydra_main()
    try:
        status = json.loads((found.output_dir / JOB_STATUS_FILE).read_text())
    except (OSError, ValueError):
        print(f"error: {command} ended without recording how (see the log in {found.output_dir})", file=sys.stderr)
        sys.exit(1)
    sys.exit(int(status.get("exit_code", 1)))
