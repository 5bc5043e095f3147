"""The README's quick start is what CI runs: a missing install step must fail in CI first."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the quick start has no ```bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def ci_commands() -> list[str]:
    """The commands between `set -x` and the marker of CI's own checks."""
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    after_trace = lines[lines.index("set -x") + 1 :]
    quick_start = after_trace[
        : next(i for i, line in enumerate(after_trace) if line.startswith("# --- CI's own checks"))
    ]
    return [line.strip() for line in quick_start if line.strip() and not line.startswith("#")]


def test_quick_start_is_two_commands_install_and_run_then_tests():
    commands = quick_start_commands()
    assert len(commands) == 2
    install_and_run, tests = commands
    assert "pip install" in install_and_run and install_and_run.endswith("-m sda.run")
    assert tests.endswith("-m pytest")


def test_ci_runs_exactly_the_readme_quick_start():
    assert ci_commands() == quick_start_commands()


def test_readme_python_example_runs_without_hydra_and_writes_a_file(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example
    code = example.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    written = sorted((tmp_path / "renders").iterdir())
    audio = [p for p in written if p.suffix == ".wav"]
    assert len(audio) == 1 and audio[0].with_suffix(".json") in written
    info = sf.info(str(audio[0]))
    assert info.frames == round(5.0 * 48000) == result.frames


def test_readme_source_example_runs_from_python_on_a_recording(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "FileSource" in block]
    monkeypatch.chdir(tmp_path)
    t = np.arange(3 * 44100) / 44100
    sf.write("take3.wav", np.stack([0.4 * np.sin(2 * np.pi * 220 * t) * np.exp(-t)] * 2, 1), 44100)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    results = namespace["results"]
    assert [r.seed for r in results] == [0, 1, 2] and all(r.frames == 5 * 48000 for r in results)
    assert all(r.source_files[0]["path"] == "take3.wav" for r in results)
