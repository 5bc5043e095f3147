"""`python -m sda.corpora`: the development corpora, from a synthesized stand-in for sonic-pi-samples."""

from __future__ import annotations

from pathlib import Path

from sda.corpora import main, set_up
from sda.data.folder import load_audio_folder
from tests.helpers import run_sda, tone_file

NAMES = ("ambi_drone", "ambi_choir", "loop_amen", "bd_808", "tabla_na", "drum_roll", "elec_beep", "guit_em9")


def fake_samples(folder: Path) -> Path:
    for i, name in enumerate(NAMES):
        tone_file(folder / f"{name}.flac", 1.0, 110.0 * (i + 1), sample_rate=44100)
    (folder / "README.md").write_text("not audio")
    return folder


def test_groups_are_linked_by_prefix_and_load_as_datasets(tmp_path: Path):
    source, destination = fake_samples(tmp_path / "samples"), tmp_path / "corpora"
    groups = set_up(source, destination)
    assert {g: [p.name for p in files] for g, files in groups.items()} == {
        "sonic_pi_textures": ["ambi_choir.flac", "ambi_drone.flac"],
        "sonic_pi_loops": ["loop_amen.flac"],
        "sonic_pi_one_shots": ["bd_808.flac", "drum_roll.flac", "tabla_na.flac"],
    }
    textures = load_audio_folder(destination / "sonic_pi_textures")
    assert [c.path.name for c in textures.clips] == ["ambi_choir.flac", "ambi_drone.flac"]
    assert textures.clips[0].audio.shape == (48000,)  # read through the link, resampled from 44.1 kHz
    assert (destination / "sonic_pi_loops" / "loop_amen.flac").resolve() == (source / "loop_amen.flac").resolve()


def test_rerunning_keeps_what_is_right_drops_stale_links_and_never_touches_other_files(tmp_path: Path):
    source, destination = fake_samples(tmp_path / "samples"), tmp_path / "corpora"
    set_up(source, destination)
    mine = destination / "sonic_pi_loops" / "my_notes.txt"
    mine.write_text("kept")
    (source / "ambi_choir.flac").unlink()
    set_up(source, destination)
    assert sorted(p.name for p in (destination / "sonic_pi_textures").iterdir()) == ["ambi_drone.flac"]
    assert mine.read_text() == "kept"
    copied = tmp_path / "copies"
    set_up(source, copied, copy=True)
    assert not (copied / "sonic_pi_loops" / "loop_amen.flac").is_symlink()


def test_without_the_package_the_command_says_how_to_install_it(tmp_path: Path, capsys):
    assert main(["--source", str(tmp_path / "absent"), "--dest", str(tmp_path / "corpora")]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "apt-get install sonic-pi-samples" in error
    assert not (tmp_path / "corpora").exists()


def test_the_command_prints_each_group(tmp_path: Path):
    source = fake_samples(tmp_path / "samples")
    done = run_sda("corpora", "--source", str(source), "--dest", "corpora", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sonic_pi_one_shots: 3 files, 3.0 s" in done.stdout
