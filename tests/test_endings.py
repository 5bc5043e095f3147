"""Every ending of a run tells the truth: SIGINT and SIGTERM end it with one line, exit status
130 / 143 and files that say `interrupted` with what was done, and resume= completes it; a write
that fails mid-run (a file-size limit, as a full disk) leaves a final line and files that agree
with what is on disk; a resume moves a broken output aside into broken/ before making its
identity again, so a folder never holds two audio files for one identity.

Commands run for real in subprocesses; references are made in-process with `run_job`, and audio
is compared by identity and sha256 (file names carry times)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    import resource
except ImportError:  # not on Windows
    resource = None

from sda import interruption, summary
from sda.files import file_sha256
from sda.interruption import Interrupted
from sda.outputs import verify_output
from sda.report import write_report
from sda.runner import ItemOutcome, run_job
from tests.helpers import (
    ONE_THREAD,
    REPO,
    compose_run,
    job_folder,
    outputs_by_identity,
    read_manifest,
    sda_run,
    summary_line,
    write_job_outcome,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT_RUN = ["count=10", "duration_s=0.25"]


def environment() -> dict[str, str]:
    return {**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1"}


def start_sda_run(*args: str, cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sda.run", *args],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def wait_for(paths, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until `paths()` finds something (the run is under way), or the process ends."""
    deadline = time.monotonic() + timeout_s
    while not list(paths()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be signalled"


def file_size_limit(n_bytes: int):
    """For Popen's preexec_fn: no file the process writes may grow past `n_bytes` (a write that
    would fails with EFBIG, as one on a full disk fails with ENOSPC)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return limit


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """identity -> sha256 of the files an uninterrupted SHORT_RUN makes."""
    folder = tmp_path_factory.mktemp("reference")
    outcome = run_job(compose_run(*SHORT_RUN), folder, base_dir=REPO)
    assert outcome.count("done") == 10
    return outputs_by_identity(folder)


# --------------------------------------------------------------------------------------------
# SIGINT and SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_run_with_one_line_and_files_that_say_interrupted_then_resume_completes_it(
    tmp_path, reference, signum, status
):
    name = signal.Signals(signum).name
    job = tmp_path / "run"
    proc = start_sda_run(*SHORT_RUN, f"hydra.run.dir={job}", cwd=tmp_path)
    wait_for(lambda: job.glob("gen_*.wav"), proc)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=120)

    assert proc.returncode == status, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    sidecars = sorted(job.glob("gen_*.json"))
    done = len(sidecars)
    assert 1 <= done < 10
    # Nothing half-written: every audio file has a sidecar it matches, no temporary file.
    assert all(verify_output(s).ok for s in sidecars)
    assert len(list(job.glob("gen_*.wav"))) == done and not list(job.glob(".*.tmp"))
    assert summary_line(output).endswith(
        f"sda: {done} done / 0 skipped / 0 failed in 1 job, interrupted by {name}, {10 - done} of 10 not made, "
        f"resume={job} continues it -> {job}"
    )

    outcome = json.loads((job / "outcome.json").read_text())
    assert (outcome["interrupted"], outcome["counts"], outcome["not_made"]) == (
        name,
        {"done": done, "skipped": 0, "failed": 0, "rejected": 0},
        10 - done,
    )
    recorded = json.loads((job / "summary.json").read_text())
    assert (recorded["interrupted"], recorded["done"], recorded["unaccounted"], recorded["exit_status"]) == (
        name,
        done,
        10 - done,
        status,
    )
    assert recorded["report"] == "written" and recorded["ok"] is False
    assert [row["status"] for row in read_manifest(job)] == ["done"] * done
    assert f"interrupted by {name}: {10 - done} output(s) not made" in (job / "index.html").read_text()

    again = sda_run(f"resume={job}", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"sda: {10 - done} done / {done} skipped / 0 failed in 1 job -> " in summary_line(
        again.stdout + again.stderr
    )
    assert outputs_by_identity(job) == reference
    assert len(list(job.glob("gen_*"))) == 20
    assert json.loads((job / "summary.json").read_text())["interrupted"] is None


def write_in_flight(job: Path) -> bool:
    """An output being written: its temporary file, or its sidecar without its audio yet."""
    try:
        names = os.listdir(job)
    except FileNotFoundError:
        return False
    if any(name.startswith(".gen_") and name.endswith(".tmp") for name in names):
        return True
    sidecars = {name.removesuffix(".json") for name in names if name.startswith("gen_") and name.endswith(".json")}
    return bool(sidecars - {name.removesuffix(".wav") for name in names if name.endswith(".wav")})


def stop_while_writing(job: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Freeze the run (SIGSTOP) at a moment when an output is being written, as seen on disk."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        if write_in_flight(job):
            proc.send_signal(signal.SIGSTOP)
            if write_in_flight(job):
                return
            proc.send_signal(signal.SIGCONT)
    raise AssertionError("no write was caught in flight before the run ended")


# On a CPU the render's own thread writes (writers=0, chosen from the device); writers=2 is the
# pool of threads a GPU run writes with, here beside a CPU render.
WRITERS = pytest.mark.parametrize("writers", ["writers=0", "writers=2"])


@pytest.mark.slow
@WRITERS
def test_a_kill_while_writes_are_in_flight_leaves_nothing_that_passes_for_done_and_resume_completes(
    tmp_path, reference, writers
):
    job = tmp_path / "run"
    proc = start_sda_run(*SHORT_RUN, writers, f"hydra.run.dir={job}", cwd=tmp_path)
    stop_while_writing(job, proc)
    proc.kill()
    proc.communicate(timeout=60)

    assert write_in_flight(job)  # what the kill left: a temporary file or a sidecar without audio
    made = [s for s in job.glob("gen_*.json") if verify_output(s).ok]
    assert len(made) < 10
    again = sda_run(f"resume={job}", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"sda: {10 - len(made)} done / {len(made)} skipped / 0 failed" in summary_line(again.stdout + again.stderr)
    assert outputs_by_identity(job) == reference
    assert len(list(job.glob("gen_*"))) == 20 and not list(job.glob(".*.tmp"))


@pytest.mark.slow
@WRITERS
def test_a_signal_while_writes_are_in_flight_lets_them_finish_and_records_exactly_what_is_on_disk(
    tmp_path, reference, writers
):
    job = tmp_path / "run"
    proc = start_sda_run(*SHORT_RUN, writers, f"hydra.run.dir={job}", cwd=tmp_path)
    stop_while_writing(job, proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    output, _ = proc.communicate(timeout=120)

    assert proc.returncode == 143, output
    assert not write_in_flight(job), "the write in flight was finished, nothing was left half-done"
    sidecars = sorted(job.glob("gen_*.json"))
    assert sidecars and all(verify_output(s).ok for s in sidecars)
    assert len(list(job.glob("gen_*.wav"))) == len(sidecars)
    outcome = json.loads((job / "outcome.json").read_text())
    assert outcome["interrupted"] == "SIGTERM"
    assert outcome["counts"]["done"] == len(sidecars) and outcome["not_made"] == 10 - len(sidecars)
    assert {item["sidecar"] for item in outcome["items"]} == {s.name for s in sidecars}
    made = outputs_by_identity(job)
    assert made == {identity: reference[identity] for identity in made}  # the bytes of an uninterrupted run


@pytest.mark.slow
def test_a_job_in_a_launchers_worker_records_the_interruption_and_returns(tmp_path):
    """What a joblib or submitit worker runs: Hydra's job without sda.run's main(), which handles
    the signals in the launching process. The job records `interrupted` and returns normally, so
    that the launcher reads outcome.json instead of a worker's exception."""
    job = tmp_path / "job"
    code = "import sys\nfrom sda.run import _hydra_main\nsys.argv = ['sda.run', *sys.argv[1:]]\n_hydra_main()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *SHORT_RUN, f"hydra.run.dir={job}"],
        cwd=tmp_path,
        # Hydra finds conf/ from the task function's file, as under `python -m sda.run`.
        env={**environment(), "HYDRA_MAIN_MODULE": "__main__"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(lambda: job.glob("gen_*.wav"), proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)

    assert proc.returncode == 0, output
    assert "Traceback" not in output
    done = len([s for s in job.glob("gen_*.json") if verify_output(s).ok])
    outcome = json.loads((job / "outcome.json").read_text())
    assert (outcome["interrupted"], outcome["counts"]["done"], outcome["not_made"]) == ("SIGTERM", done, 10 - done)
    assert 1 <= done < 10


def test_a_signal_during_a_write_lets_it_finish_and_a_second_one_in_a_worker_is_ignored():
    previous = signal.getsignal(signal.SIGTERM)
    written = []
    with interruption.handling_signals(second_ends_at_once=False):
        with pytest.raises(Interrupted) as caught:
            with interruption.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                written.append("sidecar")
                os.kill(os.getpid(), signal.SIGTERM)  # a supervisor forwarding it again
                written.append("audio")
        assert written == ["sidecar", "audio"]
        assert (caught.value.signum, caught.value.exit_status) == (signal.SIGTERM, 143)
    assert signal.getsignal(signal.SIGTERM) is previous
    # Not an Exception: Hydra catches those from a job and starts the next one.
    assert not isinstance(caught.value, Exception)


def test_outside_a_write_a_signal_abandons_the_work_at_once():
    started = time.monotonic()
    with interruption.handling_signals(), pytest.raises(Interrupted) as caught:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)  # an item being rendered
    assert time.monotonic() - started < 5
    assert (caught.value.signal_name, caught.value.exit_status) == ("SIGINT", 130)


def test_a_second_ctrl_c_ends_the_launching_process_at_once_with_one_line(tmp_path):
    code = (
        "import os, signal, time\n"
        "from sda import interruption\n"
        "with interruption.handling_signals(), interruption.deferred():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 130
    assert proc.stderr.splitlines() == ["sda: second SIGINT: stopped at once; resume= continues the run"]


# --------------------------------------------------------------------------------------------
# Writes that fail mid-run


@pytest.mark.slow
@pytest.mark.skipif(resource is None, reason="needs POSIX file-size limits")
def test_when_outcome_and_report_cannot_be_written_the_line_and_summary_count_the_files_made(tmp_path):
    """A file-size limit (EFBIG, as a full disk gives ENOSPC) that lets every output through but
    not outcome.json or the report: the run still says what it made."""

    job = tmp_path / "run"
    settings = ["count=20", "duration_s=0.01", "export.bit_depth=16"]  # 1 kB audio, 3.5 kB sidecars, 7 kB outcome
    proc = subprocess.run(
        [sys.executable, "-m", "sda.run", *settings, f"hydra.run.dir={job}"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(5000),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    assert len([s for s in job.glob("gen_*.json") if verify_output(s).ok]) == 20
    assert not (job / "outcome.json").exists()
    assert not (job / "manifest.csv").exists() and not (job / "index.html").exists()
    line = summary_line(output)
    assert "sda: 20 done / 0 skipped / 0 failed in 1 job, 1 job(s) failed, report not written: cannot write " in line
    assert line.endswith(f": File too large -> {job}")
    assert "no outcome.json from this run" in output and "20 output(s) it made verify" in output
    recorded = json.loads((job / "summary.json").read_text())
    assert (recorded["done"], recorded["unaccounted"], recorded["exit_status"]) == (20, 0, 1)
    assert recorded["report"].startswith("not written: cannot write ")
    assert recorded["job_outcomes"][0]["outcome"] == "missing"


@pytest.mark.skipif(resource is None, reason="needs POSIX file-size limits")
def test_a_lock_that_cannot_be_written_is_one_line_before_anything_runs(tmp_path):
    job = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sda.run", "duration_s=0.1", f"hydra.run.dir={job}"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(0),  # not one byte of the lock file's process id fits
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: cannot write into {job}: File too large"]
    assert [p.name for p in job.iterdir()] == [".sda.lock"]


@pytest.mark.skipif(resource is None, reason="needs POSIX file-size limits")
def test_when_summary_json_cannot_be_written_the_line_says_so_and_no_stale_one_is_left(tmp_path, caplog):
    jobs = 30  # a summary of thirty jobs is larger than the limit; the manifest's header is not
    for number in range(jobs):
        job = job_folder(tmp_path, str(number), [f"seed={number}"])
        write_job_outcome(job, [ItemOutcome(number, f"{number:016x}", "skipped")], token="this run")
    (tmp_path / "summary.json").write_text('{"done": 30, "ok": true}')  # an earlier run's
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, limits[1]))
    try:
        with caplog.at_level(logging.INFO, logger="sda.run"):
            status = summary.finish_run(tmp_path, True, "this run", jobs, expected_items=jobs)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert status == 1
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sda: ")]
    assert line.startswith(
        f"sda: 0 done / 30 skipped / 0 failed in 30 jobs, summary.json not written: cannot write "
        f"{tmp_path / 'summary.json'}: File too large, report not written: cannot write "
    )
    assert not (tmp_path / "summary.json").exists()  # the earlier run's would tell of another ending
    assert not (tmp_path / "manifest.csv").exists() and not (tmp_path / "index.html").exists()


# --------------------------------------------------------------------------------------------
# Broken outputs and resume


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two") / "job"
    assert run_job(compose_run("count=2", "duration_s=0.25"), folder, base_dir=REPO).count("done") == 2
    return folder


def _break(breakage: str, sidecar: Path, other_identity: str) -> None:
    record = json.loads(sidecar.read_text())
    audio = sidecar.parent / record["file"]["name"]
    if breakage == "identity edited":  # it now claims the other seed's identity
        record["identity"] = other_identity
        sidecar.write_text(json.dumps(record))
    elif breakage == "truncated":
        audio.write_bytes(audio.read_bytes()[:-3000])
    else:  # same length, same header: only the checksum tells
        data = bytearray(audio.read_bytes())
        data[-10] ^= 0xFF
        audio.write_bytes(bytes(data))


@pytest.mark.parametrize("breakage", ["identity edited", "truncated", "checksum"])
def test_resume_moves_a_broken_output_into_broken_before_making_its_identity_again(
    tmp_path, two_outputs, breakage, caplog
):
    job = tmp_path / "job"
    shutil.copytree(two_outputs, job)
    made = outputs_by_identity(job)
    seed0, seed1 = (next(job.glob(f"gen_*_seed{seed}.json")) for seed in (0, 1))
    _break(breakage, seed0, json.loads(seed1.read_text())["identity"])
    broken_files = {p.name: p.read_bytes() for p in job.glob(seed0.stem + ".*")}
    assert not verify_output(seed0).ok

    with caplog.at_level(logging.INFO, logger="sda.run"):
        outcome = run_job(compose_run("count=2", "duration_s=0.25"), job, base_dir=REPO)

    assert (outcome.count("done"), outcome.count("skipped")) == (1, 1)
    # The broken pair, untouched, in broken/; the folder holds one verified output per identity,
    # the same bytes as first made.
    assert {p.name: p.read_bytes() for p in (job / "broken").iterdir()} == broken_files
    assert outputs_by_identity(job) == made
    assert all(verify_output(s).ok for s in job.glob("gen_*.json"))
    assert len(list(job.glob("gen_*.wav"))) == 2
    [moved] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("moved broken output")]
    assert moved.startswith(f"moved broken output {seed0.name} (") and " into broken before making identity " in moved

    write_report(job, [job])
    rows = read_manifest(job)
    assert sorted(row["status"] for row in rows) == ["broken", "done", "done"]
    [row] = [row for row in rows if row["status"] == "broken"]
    assert row["file"] == f"broken/{seed0.stem}.wav" and row["reason"].startswith("set aside in broken/")


def test_a_broken_output_whose_name_is_taken_in_broken_goes_into_a_numbered_folder(tmp_path, two_outputs):
    job = tmp_path / "job"
    shutil.copytree(two_outputs, job)
    [sidecar] = job.glob("gen_*_seed0.json")
    audio = job / json.loads(sidecar.read_text())["file"]["name"]
    _break("checksum", sidecar, "")
    broken_sha = file_sha256(audio)
    (job / "broken").mkdir()
    (job / "broken" / sidecar.name).write_text("an earlier broken copy, restored from a backup")

    run_job(compose_run("count=2", "duration_s=0.25"), job, base_dir=REPO)

    assert (job / "broken" / sidecar.name).read_text() == "an earlier broken copy, restored from a backup"
    assert file_sha256(job / "broken" / "2" / audio.name) == broken_sha
    assert (job / "broken" / "2" / sidecar.name).is_file()
    write_report(job, [job])
    rows = {row["sidecar"]: row for row in read_manifest(job) if row["status"] == "broken"}
    assert set(rows) == {f"broken/{sidecar.name}", f"broken/2/{sidecar.name}"}
    assert (
        rows[f"broken/2/{sidecar.name}"]["reason"] == "set aside in broken/ when it was made again: checksum mismatch"
    )
