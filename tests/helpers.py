"""Test helpers: running sda's commands for real, composing configs, synthesizing audio files,
building job folders with the real writers and reading back what the report wrote.

Imported by test modules as `from tests.helpers import ...`; fixtures live in conftest.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from sda.config import GenerationConfig, RunConfig, to_run_config
from sda.dsp.quality import measure_quality
from sda.files import file_sha256, write_atomic
from sda.outputs import MANIFEST_FILE, OUTCOME_FILE, SavedOutput
from sda.pipeline import GenerationResult
from sda.preflight import compose_config
from sda.runner import ItemOutcome, JobOutcome

REPO = Path(__file__).resolve().parent.parent
SR = 48000
CEILING = 10 ** (-1 / 20)  # sda's -1 dBFS output ceiling as an amplitude
# Every (format, bit depth) sda writes: (format, bit depth, libsndfile container, subtype).
FORMATS = [
    ("wav", 16, "WAV", "PCM_16"),
    ("wav", 24, "WAV", "PCM_24"),
    ("wav", 32, "WAV", "FLOAT"),
    ("flac", 16, "FLAC", "PCM_16"),
    ("flac", 24, "FLAC", "PCM_24"),
    ("ogg", 16, "OGG", "VORBIS"),
]


# One torch thread in the tests that render audio, and in the commands they run: on a shared
# two-core machine, two spinning OpenMP threads per process make phase reconstruction ten to a
# hundred times slower, and the audio's last bits depend on the thread count (references made
# in the test process must match the commands' files).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def sda_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m sda.run args...` in `cwd` on one thread."""
    return run_sda("run", *args, cwd=cwd, env=ONE_THREAD)


def summary_line(output: str) -> str:
    """The one final `sda: N done / N skipped / N failed ...` line of a run's output."""
    lines = [line for line in output.splitlines() if "sda: " in line and " done / " in line]
    assert len(lines) == 1, output
    return lines[0]


def outputs_by_identity(folder: Path) -> dict[str, str]:
    """identity -> sha256 of the audio file on disk, for every sidecar in `folder` (audio is
    compared by identity: file names carry times)."""
    found = {}
    for sidecar in sorted(folder.glob("gen_*.json")):
        record = json.loads(sidecar.read_text())
        found[record["identity"]] = file_sha256(folder / record["file"]["name"])
    return found


def compose_run(*overrides: str):
    """A validated RunConfig composed from conf/ with Hydra's compose API."""
    return to_run_config(compose_config("config", list(overrides), RunConfig))


def run_sda(
    module: str, *args: str, cwd: Path, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m sda.<module> args...` in `cwd` and capture its output."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"sda.{module}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def tone_file(
    path: Path,
    seconds: float,
    freq: float,
    sample_rate: int = SR,
    channels: int = 1,
    level_db: float = -6.0,
    seed: int = 0,
) -> Path:
    """A decaying harmonic tone with a little noise, written with soundfile."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = sum(np.sin(2 * math.pi * freq * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 5))
    tone = tone * np.exp(-t * rng.uniform(0.3, 1.5)) + 0.02 * rng.standard_normal(t.size)
    tone *= 10 ** (level_db / 20) / np.abs(tone).max()
    data = np.stack([tone * (0.8 + 0.2 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.astype(np.float32), sample_rate, subtype="PCM_24")
    return path


def make_tiny_dataset(folder: Path, files: int = 6, seconds: float = 2.0) -> Path:
    """`files` short tones of different pitches, rates and channel counts (a CI-sized dataset)."""
    rates = [48000, 44100, 96000]
    for i in range(files):
        tone_file(folder / f"tone_{i}.wav", seconds, 110.0 * (1.5**i), rates[i % 3], channels=1 + (i % 2), seed=i)
    return folder


TINY_MODEL = [
    "model.latent_dim=8",
    "model.channels=[32,32,32]",
    "batch_size=8",
    "checkpoint_every=2",
    "kl_warmup_epochs=2",
    "patience=50",
]


def assert_batch_consistency(
    fn: Callable[[Any], Sequence[Any]],
    items: Any,
    *,
    batch_output: Sequence[Any] | None = None,
    indices: Iterable[int] | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> Sequence[Any]:
    """`fn` run on a batch gives each item what it gives that item alone, in the manner of
    torchaudio's `assert_batch_consistency`.

    `fn(items)` returns one output per item, indexed like `items` (a tensor's rows or a list), an
    output being a tensor, an array, a number or a dict or list of them. For each index (all by
    default), `fn(items[i : i + 1])[0]` must equal `batch_output[i]` within atol + rtol * |alone|,
    exactly by default. `batch_output` is `fn(items)` unless given (a batch made once and shared
    by several tests). Returns the batch output."""
    if batch_output is None:
        batch_output = fn(items)
    for i in range(len(items)) if indices is None else indices:
        alone = fn(items[i : i + 1])
        assert len(alone) == 1, f"fn gave {len(alone)} outputs for one item"
        _assert_same(alone[0], batch_output[i], atol, rtol, f"item {i}")
    return batch_output


def _assert_same(alone: Any, batched: Any, atol: float, rtol: float, where: str) -> None:
    if isinstance(alone, dict):
        assert alone.keys() == batched.keys(), f"{where}: keys differ"
        for key in alone:
            _assert_same(alone[key], batched[key], atol, rtol, f"{where}[{key!r}]")
    elif alone is None or isinstance(alone, str | bool):
        assert alone == batched, f"{where} alone is {alone!r}, in the batch {batched!r}"
    else:
        torch.testing.assert_close(
            alone,
            batched,
            atol=atol,
            rtol=rtol,
            msg=lambda detail: f"{where} alone differs from {where} in the batch: {detail}",
        )


def join_ratios(audio: np.ndarray, joins: list[int], half: int = 32) -> tuple[float, float]:
    """(click ratio, spectral-flux ratio) at `joins` (sample positions).

    Each statistic is taken as its maximum over a window of 2*half samples (flux: 256) centred on
    each join, and compared with the 99th percentile of the same statistic over equal, disjoint
    blocks away from every join. Click: |x[n+1] - x[n]|. Flux: mean positive change in dB per
    bin between consecutive 256-point frames (hop 64)."""
    x = audio.astype(np.float64)

    def ratio(values: np.ndarray, width: int) -> float:
        n = values.size // width
        blocks = values[: n * width].reshape(n, width).max(axis=1)
        starts = np.arange(n) * width
        away = np.ones(n, bool)
        for j in joins:
            away &= (starts + width <= j - 2 * width) | (starts >= j + 2 * width)
        at_joins = max(values[max(0, j - width // 2) : j + width // 2].max() for j in joins)
        return float(at_joins / np.percentile(blocks[away], 99))

    jumps = np.abs(np.diff(x))
    spectrum = torch.stft(
        torch.from_numpy(x),
        256,
        64,
        window=torch.hann_window(256, dtype=torch.float64),
        center=True,
        return_complex=True,
    ).abs()
    level = 20 * torch.log10(spectrum + 1e-5)
    flux = (level[:, 1:] - level[:, :-1]).clamp(min=0).mean(dim=0).numpy()
    return ratio(jumps, 2 * half), ratio(np.repeat(flux, 64), 256)


def has_cuda() -> bool:
    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------
# Job folders and the report (tests/report)


def synthetic_result(audio: np.ndarray, seed: int, config: GenerationConfig) -> GenerationResult:
    """A GenerationResult holding `audio` (`[channels, frames]` at the config's export rate)."""
    now = datetime.now(UTC)
    return GenerationResult(
        seed=seed,
        right_seed=None,
        audio=audio.astype(np.float32),
        sample_rate=config.export.sample_rate,
        metrics=measure_quality(torch.from_numpy(audio.astype(np.float32)), config.export.sample_rate),
        config=config,
        model_name="synthetic",
        model_sha256="5" * 64,
        device="cpu",
        started_at=now,
        finished_at=now,
    )


def job_folder(sweep: Path, name: str, overrides: list[str]) -> Path:
    """A job folder as Hydra makes it: `.hydra/config.yaml` and `.hydra/overrides.yaml`."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("chunking:\n  mode: crossfade\nstereo:\n  mode: mono\n")
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return job


def write_job_outcome(
    job: Path, items: list[ItemOutcome], error: str | None = None, config=None, token: str | None = None
) -> None:
    """An outcome.json as a job writes it (`config`: the job's RunConfig; `token`: its launch)."""
    settings = config.generation_fields() if config is not None else None
    outcome = JobOutcome(output_dir=str(job), items=items, error=error, overrides=[], config=settings, run_token=token)
    write_atomic(job / OUTCOME_FILE, json.dumps(outcome.to_dict(), indent=2).encode())


def done_item(saved: SavedOutput) -> ItemOutcome:
    quality = saved.record["quality"]
    return ItemOutcome(
        saved.record["seed"],
        saved.identity,
        "done",
        "",
        saved.audio_path.name,
        saved.sidecar_path.name,
        quality["rating"],
        quality["peak_dbfs"],
        quality["loudness_lufs"],
    )


def read_manifest(folder: Path) -> list[dict[str, str]]:
    with (folder / MANIFEST_FILE).open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB, non-interlaced PNG whose rows all use filter 0 -> `[h, w, 3]` uint8
    (no imaging library: chunks, CRCs, zlib)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: no PNG signature"
    position, chunks = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        tag, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(tag + body) == crc, f"{path}: bad CRC in {tag!r}"
        chunks.append((tag, body))
        position += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all(), "every row uses filter 0"
    return rows[:, 1:].reshape(height, width, 3)


class PageParser(HTMLParser):
    """What the audition page holds: rows, audio and image sources, elements by id, tag counts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.audio: list[str] = []
        self.images: list[str] = []
        self.attributes: dict[str, dict[str, str]] = {}
        self.texts: dict[str, str] = {}
        self.tag_counts: dict[str, int] = {}
        self._open_id: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tag_counts[tag] = self.tag_counts.get(tag, 0) + 1
        attributes = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-status" in attributes:
            self.rows.append(attributes)
        if tag == "audio":
            self.audio.append(attributes.get("src", ""))
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        if "id" in attributes:
            self.attributes[attributes["id"]] = attributes
            self._open_id = attributes["id"]
        if tag == "body":
            self.attributes["body"] = attributes

    def handle_data(self, data):
        if self._open_id:
            self.texts[self._open_id] = self.texts.get(self._open_id, "") + data

    def handle_endtag(self, tag):
        self._open_id = None


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser


def chromium_dom(url: str, profile: Path, *extra: str) -> str:
    """The DOM of `url` after a real headless chromium ran its scripts (`extra`: more switches),
    with a profile folder of its own and no network."""
    proc = subprocess.run(
        [
            shutil.which("chromium") or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            *extra,
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
