"""A resume moves a broken output aside into broken/ before making its identity again, so a
folder never holds two audio files for one identity; the report lists it there.

References are made in-process with `run_job`, and audio is compared by identity and sha256
(file names carry times)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from sda.files import file_sha256
from sda.outputs import verify_output
from sda.report import write_report
from sda.runner import run_job
from tests.helpers import REPO, compose_run, outputs_by_identity, read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


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
