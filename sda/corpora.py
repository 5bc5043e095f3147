"""`python -m sda.corpora`: set up the real development corpora of the evaluation suite
(conf/suite/dev.yaml) in data/corpora/, from Debian's sonic-pi-samples package (recorded
samples under a free licence, in /usr/share/sonic-pi/samples).

    sonic_pi_textures    ambi_*                              sustained textures, drones and pads
    sonic_pi_loops       loop_*                              loops and breakbeats
    sonic_pi_one_shots   bd_* sn_* drum_* perc_* tabla_*     single hits of drums and percussion

Each group is a folder of symbolic links to the package's files (`--copy` copies them instead).
Rerunning is safe: links already right are kept, links to files no longer in a group are
removed, and nothing else in the folders is touched. It installs nothing; without the package it
says how to install it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

import soundfile as sf

log = logging.getLogger("sda.corpora")

SONIC_PI_SAMPLES = Path("/usr/share/sonic-pi/samples")
DEFAULT_DESTINATION = Path("data/corpora")
GROUPS: dict[str, tuple[str, ...]] = {
    "sonic_pi_textures": ("ambi_",),
    "sonic_pi_loops": ("loop_",),
    "sonic_pi_one_shots": ("bd_", "sn_", "drum_", "perc_", "tabla_"),
}


class MissingSamples(Exception):
    """The samples folder is not there."""


def group_files(source: Path) -> dict[str, list[Path]]:
    """The FLAC files of each group in `source`, sorted by name."""
    if not source.is_dir():
        raise MissingSamples(
            f"{source} not found: install the samples with `sudo apt-get install sonic-pi-samples` "
            "(or give --source FOLDER)"
        )
    files = sorted(p for p in source.iterdir() if p.suffix == ".flac" and p.is_file())
    return {group: [p for p in files if p.name.startswith(prefixes)] for group, prefixes in GROUPS.items()}


def set_up(source: Path, destination: Path, copy: bool = False) -> dict[str, list[Path]]:
    """Link (or copy) each group's files into `destination/<group>/`; returns the files per group."""
    groups = group_files(source)
    for group, files in groups.items():
        folder = destination / group
        folder.mkdir(parents=True, exist_ok=True)
        wanted = {p.name for p in files}
        for stale in folder.iterdir():
            if stale.is_symlink() and stale.name not in wanted:
                stale.unlink()
        for file in files:
            _place(file.resolve(), folder / file.name, copy)
    return groups


def _place(target: Path, path: Path, copy: bool) -> None:
    if copy:
        if path.is_symlink():
            path.unlink()
        if not (path.is_file() and path.stat().st_size == target.stat().st_size):
            shutil.copy2(target, path)
        return
    if path.is_symlink() and Path(os.readlink(path)) == target:
        return
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        log.warning("keeping %s: a file, not a link (remove it to link the package's file)", path)
        return
    path.symlink_to(target)


def _seconds(files: list[Path]) -> float:
    return sum(sf.info(str(p)).duration for p in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda.corpora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SONIC_PI_SAMPLES, help="the sonic-pi-samples folder")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DESTINATION, help="where the group folders go")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    args = parser.parse_args(argv)
    try:
        groups = set_up(args.source, args.dest, args.copy)
    except (MissingSamples, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for group, files in groups.items():
        print(f"{args.dest / group}: {len(files)} files, {_seconds(files):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
