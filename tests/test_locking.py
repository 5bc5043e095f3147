"""One writer per output folder: a process refused by another's lock exits non-zero with that one
reason and leaves the other process's folder exactly as it was."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sda.run import main as run_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def holder():
    """Start a process that holds `folder`'s sda lock, as a running sda.run would."""
    started: list[subprocess.Popen] = []

    def hold(folder: Path) -> int:
        folder.mkdir(parents=True, exist_ok=True)
        code = (
            "import fcntl, os, sys, time\n"
            f"handle = open({str(folder / '.sda.lock')!r}, 'a+')\n"
            "fcntl.flock(handle, fcntl.LOCK_EX)\n"
            "handle.seek(0); handle.truncate(); handle.write(str(os.getpid())); handle.flush()\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"
        started.append(proc)
        return proc.pid

    yield hold
    for proc in started:
        proc.kill()
        proc.wait()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        run_main(argv)
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_run_into_a_folder_another_process_writes_into_exits_1_and_touches_nothing(
    tmp_path, monkeypatch, capsys, holder
):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "night"
    pid = holder(folder)
    # What the other process's earlier work left: it must not be rewritten or counted.
    for name, text in {"summary.json": '{"done": 30}', "index.html": "<p>theirs</p>", "outcome.json": "{}"}.items():
        (folder / name).write_text(text)
    before = snapshot(folder)
    time.sleep(0.01)
    line = refused([f"hydra.run.dir={folder}", "duration_s=0.5"], capsys)
    assert line == f"error: another sda process (pid {pid}) is writing into {folder}; let it finish or stop it first"
    assert snapshot(folder) == before


def test_a_run_into_a_job_folder_of_a_live_sweep_is_refused(tmp_path, monkeypatch, capsys, holder):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    pid = holder(sweep)
    line = refused([f"hydra.run.dir={sweep / '3'}", "duration_s=0.5"], capsys)
    assert line == (
        f"error: another sda process (pid {pid}) is writing into {sweep}, which holds it; "
        "let it finish or stop it first"
    )
    assert not (sweep / "3").exists()


def test_a_sweep_over_a_folder_with_a_job_someone_runs_is_refused(tmp_path, monkeypatch, capsys, holder):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    pid = holder(sweep / "1")
    line = refused(["-m", "seed=0,1", f"hydra.sweep.dir={sweep}", "duration_s=0.5"], capsys)
    assert line == (
        f"error: another sda process (pid {pid}) is writing into {sweep / '1'}, inside {sweep}; "
        "let it finish or stop it first"
    )
    assert sorted(p.name for p in sweep.iterdir()) == ["1"]


def test_a_folder_of_outputs_from_an_older_sda_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    # Format 1 identities held every field of a group; this sda would take them all for broken.
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "night" / "0"
    folder.mkdir(parents=True)
    (folder / "gen_20261101T000000Z_seed0.json").write_text('{"sidecar_format_version": 1, "identity": "x"}')
    before = snapshot(tmp_path / "night")
    line = refused(["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'night'}", "duration_s=0.5"], capsys)
    assert line.startswith(f"error: {folder} holds outputs of sidecar format 1, made by an older sda")
    assert snapshot(tmp_path / "night") == before
