"""What a run will make and how long it will take, before it starts.

The estimate divides the audio a run asks for by a throughput measured end to end on this
device (audio seconds per wall second, whole process but its interpreter start-up), kept per
device and per kind of output in a small cache file: `throughput.json` in `$SDA_CACHE_DIR`, else
`$XDG_CACHE_HOME/sda`, else `~/.cache/sda`. `python -m sda.bench --end-to-end` records what it
measures there, and so does every run whose jobs took at least RECORD_MIN_S (shorter runs are
dominated by their fixed costs). Deleting the file forgets every figure; an unreadable one is
ignored and replaced at the next record.

A kind never measured on this device is estimated from one that was, scaled by the voices each
output renders (a dual_seed output is two); with nothing measured on the device there is no
estimate, and the plan says how to get one.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from sda.config import DualSeedStereo, GenerationConfig
from sda.errors import SdaError
from sda.files import write_json_atomic

THROUGHPUT_FILE = "throughput.json"
CACHE_ENV = "SDA_CACHE_DIR"
# A run records its throughput only when its jobs took this long: a short run's start-up and
# report would pass for slowness.
RECORD_MIN_S = 60.0
FORMAT_VERSION = 1


def cache_dir() -> Path:
    """Where sda keeps its measured figures (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sda"


def cache_path() -> Path:
    return cache_dir() / THROUGHPUT_FILE


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What decides the speed: the GPU's name, or the processor and torch's thread count."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return f"cpu {_processor()} x{torch.get_num_threads()} threads"


def voices(config: GenerationConfig) -> int:
    """Mono renders per output."""
    return 2 if isinstance(config.stereo, DualSeedStereo) else 1


def kind_of(config: GenerationConfig) -> str:
    """What changes the cost of an output beyond its length."""
    export = config.export
    return f"{config.chunking.mode} {config.stereo.mode} {export.format} {export.sample_rate} Hz"


@dataclass(frozen=True)
class Rate:
    """A measured throughput: `audio_s_per_s` for `kind` on `device`, by `source` at `when`."""

    device: str
    kind: str
    audio_s_per_s: float
    voices: int
    source: str
    when: str

    def scaled_to(self, config: GenerationConfig) -> float:
        return self.audio_s_per_s * self.voices / voices(config)


def _read() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        return {}
    return data


def measured_rates(device: str) -> list[Rate]:
    """Every rate the cache holds for `device`."""
    entries = _read().get("devices", {}).get(device, {})
    rates = []
    for kind, entry in entries.items() if isinstance(entries, dict) else ():
        try:
            rates.append(
                Rate(
                    device,
                    kind,
                    float(entry["audio_s_per_s"]),
                    int(entry["voices"]),
                    str(entry["source"]),
                    str(entry["when"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return [rate for rate in rates if rate.audio_s_per_s > 0]


def record_rate(device: torch.device, config: GenerationConfig, audio_s: float, wall_s: float, source: str) -> Rate:
    """Store `audio_s / wall_s` as the throughput of `config`'s kind on `device`; returns it.
    Raises OutputError when the cache cannot be written."""
    rate = Rate(
        device_name(device),
        kind_of(config),
        audio_s / wall_s,
        voices(config),
        source,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    data = _read() or {"format_version": FORMAT_VERSION}
    data.setdefault("devices", {}).setdefault(rate.device, {})[rate.kind] = {
        "audio_s_per_s": rate.audio_s_per_s,
        "voices": rate.voices,
        "source": rate.source,
        "when": rate.when,
    }
    cache_dir().mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache_path(), data, replace=True)
    return rate


def best_rate(device: torch.device, config: GenerationConfig) -> Rate | None:
    """The measured rate that best stands for `config` on `device`: its own kind, else the
    same chunking, else any kind (scaled by voices: `Rate.scaled_to`); None when nothing was
    measured on the device."""
    rates = measured_rates(device_name(device))
    kind = kind_of(config)
    for matches in (
        lambda r: r.kind == kind,
        lambda r: r.kind.split()[0] == config.chunking.mode,
        lambda r: True,
    ):
        found = [rate for rate in rates if matches(rate)]
        if found:
            return max(found, key=lambda rate: rate.when)
    return None


def duration_text(seconds: float) -> str:
    """`0.5 s`, `45 s`, `12 min`, `7 h 40 min`."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass(frozen=True)
class PlanPart:
    """One composition of a run or sweep: its config and how many jobs share it."""

    config: GenerationConfig
    jobs: int

    @property
    def files(self) -> int:
        return self.config.count * self.jobs

    @property
    def audio_s(self) -> float:
        return self.files * self.config.duration_s


def plan_lines(parts: list[PlanPart], needed_bytes: int, device_of: Any) -> list[str]:
    """The plan pre-flight prints: files, audio hours and disk, then the estimated wall time
    (from `best_rate`, for each part on `device_of(config)`, a torch.device; None: the jobs run
    on another machine, no estimate)."""
    files = sum(part.files for part in parts)
    audio_s = sum(part.audio_s for part in parts)
    kinds = sorted({kind_of(part.config) for part in parts})
    jobs = sum(part.jobs for part in parts)
    lines = [
        f"sda: plan: {files} file{'s' if files != 1 else ''} in {jobs} job{'s' if jobs != 1 else ''}, "
        f"{duration_text(audio_s)} of audio ({'; '.join(kinds)}), about {size_text(needed_bytes)} on disk"
    ]
    total_s, sources = 0.0, []
    for part in parts:
        device = device_of(part.config)
        if device is None:
            lines.append("sda: estimate: none here: the jobs run on the launcher's machines")
            return lines
        rate = best_rate(device, part.config)
        if rate is None:
            lines.append(
                f"sda: estimate: none yet for {device_name(device)}: `python -m sda.bench --end-to-end` "
                f"measures its throughput (and a run of over {RECORD_MIN_S:.0f} s records its own)"
            )
            return lines
        total_s += part.audio_s / rate.scaled_to(part.config)
        sources.append(rate)
    rate = sources[0]
    measured = f"{rate.audio_s_per_s:.1f} audio s/s measured by {rate.source} on {rate.when[:10]} for {rate.kind}"
    others = len({other.kind for other in sources} - {rate.kind})
    more = f" and {others} more" if others else ""
    lines.append(
        f"sda: estimate: about {duration_text(total_s)} on {rate.device} "
        f"({measured}{more}; {cache_path()}, delete it to forget)"
    )
    return lines


def size_text(n_bytes: float) -> str:
    """A size in GB, MB or kB, as the plan and the disk check print it."""
    if n_bytes >= 1e9:
        return f"{n_bytes / 1e9:.1f} GB"
    return f"{n_bytes / 1e6:.0f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.0f} kB"


def record_run(device: torch.device, config: GenerationConfig, made: int, wall_s: float, jobs_s: float) -> Rate | None:
    """After a run of one kind of output that made `made` files: record its throughput when its
    jobs took at least RECORD_MIN_S (else None). Never raises: the run is done either way."""
    if made < 1 or jobs_s < RECORD_MIN_S or wall_s <= 0:
        return None
    try:
        return record_rate(device, config, made * config.duration_s, wall_s, "a run")
    except (OSError, SdaError):
        return None
