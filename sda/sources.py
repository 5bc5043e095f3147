"""Where an output's latents come from (the `source` config group), as one step that every
chunking mode consumes.

A chunking mode asks for the latents of the model windows it decodes, by each window's centre
time in the output (crossfade: one per chunk; latent_interp: its anchors), voice by voice:

    source.latents(item_seed, voice_seed, centres_s)  ->  [n, latent_dim] float32, on the CPU

- prior: `sample_latents(voice_seed, n)`, the draws sda has always made (same bits).
- file: the posterior mean of the file's model window centred at `offset_s + t` (the file looped
  when the output outlasts it). Each window is cut from the file, turned into a log-mel and
  encoded on its own (float64, rounded to float32), so a latent never depends on how many others
  are asked for: a longer render starts like a shorter one, whatever the batch.
- corpus: the training windows' posterior means kept in the checkpoint (sda.training_summary),
  one drawn by the item's seed for every latent asked for.
- morph: at time t, position u = t / duration_s * (K - 1) along the K files' trajectories (each
  as for `file`, from its start): SLERP between those of files floor(u) and floor(u) + 1 at t.

Then spread s in [0, 1] (every option but prior): z = sqrt(1 - s^2) * source + s * prior, the
prior's draws being those of the voice's seed. s = 0 follows the source exactly, s = 1 gives the
prior render of the seed bit for bit, and the latents keep the prior's typical size in between.

A dual_seed item's right voice has the item's source (the same file trajectory, the same corpus
draws) and its own spread noise, from its right seed.

Source files are read once per pipeline with sda.data.folder's reader (any format and rate
soundfile opens, mixed to mono, resampled to the model's rate) and identified by their content
(sha256): outputs record it, and their identity covers the content, never the path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sda import seeds as seeding
from sda.config import CorpusSource, FileSource, GenerationConfig, MorphSource, PriorSource, SourceConfig
from sda.data.folder import printable, read_audio_file
from sda.dsp.chunking import slerp
from sda.dsp.spectrogram import SpectrogramSettings, log_mel
from sda.errors import ConfigError
from sda.files import file_sha256
from sda.model import read_checkpoint, resolve_checkpoint
from sda.training_summary import TrainingSummary

# A source file with no sample above this level is silent: there is nothing to follow.
SILENT_PEAK_DBFS = -60.0


# ---------------------------------------------------------------------------------------------
# Source files: where they are, what they hold, whether they can be used


def resolve_audio_path(path: str) -> Path:
    """A source path as given (`~` expanded); a relative one is taken from the current folder."""
    return Path(path).expanduser()


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(Path(path))


def source_file_sha256(path: str, key: str = "source.path") -> str:
    """The sha256 of a source file's bytes, hashed once per file version (path, mtime, size).
    Raises a one-line ConfigError when the file does not exist."""
    resolved = resolve_audio_path(path)
    try:
        stat = resolved.stat()
    except OSError:
        raise ConfigError(key, path, "an existing audio file (not found)") from None
    if not resolved.is_file():
        raise ConfigError(key, path, "an audio file (this is not a file)")
    return _sha256_of(str(resolved.resolve()), stat.st_mtime_ns, stat.st_size)


def source_key(source: SourceConfig) -> str:
    """The config key that names the files of a source option (for error lines)."""
    return f"{source.KEY}.paths" if isinstance(source, MorphSource) else f"{source.KEY}.path"


def source_files(source: SourceConfig) -> list[dict[str, str]]:
    """`[{"path": as given, "sha256": ...}]` for every file the source reads (none for prior and
    corpus): what sidecars and recorded commands hold."""
    key = source_key(source)
    return [{"path": path, "sha256": source_file_sha256(path, key)} for path in source.audio_files()]


def source_identity(source: SourceConfig) -> dict[str, Any] | None:
    """What of the source decides the audio: its option, its parameters and its files' content
    (sha256, in order), never their paths. None for the prior, whose outputs keep the identities
    they had before sources existed."""
    if isinstance(source, PriorSource):
        return None
    parameters = {k: v for k, v in source.to_dict().items() if k not in ("path", "paths")}
    if source.audio_files():
        parameters["sha256"] = [entry["sha256"] for entry in source_files(source)]
    return parameters


@dataclass(frozen=True)
class SourceFile:
    """A source file as the pipeline uses it: mono float32 `audio` `[samples]` at the model's rate."""

    path: str
    sha256: str
    audio: torch.Tensor
    sample_rate: int


def read_source_file(path: str, key: str, sample_rate: int, window_samples: int) -> SourceFile:
    """Read and check one source file: it exists, soundfile reads it, it holds sound (a sample
    above SILENT_PEAK_DBFS) and lasts at least one model window. Raises a one-line ConfigError
    naming `key` and the file otherwise."""
    sha256 = source_file_sha256(path, key)
    clip = read_audio_file(resolve_audio_path(path), sample_rate, key)
    audio = np.asarray(clip.audio, dtype=np.float32)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak <= 10 ** (SILENT_PEAK_DBFS / 20):
        level = f"{20 * math.log10(peak):.1f} dBFS" if peak > 0 else "digital silence"
        raise ConfigError(key, printable(path), f"an audio file with sound in it (silent: peak {level})")
    if audio.shape[0] < window_samples:
        raise ConfigError(
            key,
            printable(path),
            f"an audio file at least one model window long ({audio.shape[0] / sample_rate:.3g} s is shorter "
            f"than the model's {window_samples / sample_rate:g} s)",
        )
    return SourceFile(path, sha256, torch.from_numpy(np.ascontiguousarray(audio)), sample_rate)


def preflight_sources(configs: Iterable[GenerationConfig], base_dir: Path) -> None:
    """Before anything is made: read and check every source file of every config (each point of
    a sweep), against the window of the model each point uses, and that a corpus source's model
    keeps its training windows. One-line ConfigError or CheckpointError."""
    models: dict[str, tuple[SpectrogramSettings, bool]] = {}
    checked: set[tuple[str, int, int]] = set()
    for config in configs:
        source = config.source
        if isinstance(source, PriorSource):
            continue
        path = resolve_checkpoint(config.model.checkpoint, base_dir)
        if str(path) not in models:
            record = read_checkpoint(path)
            settings = SpectrogramSettings.from_dict(record["spectrogram"])
            models[str(path)] = (settings, record.get("training_summary") is not None)
        settings, has_summary = models[str(path)]
        if isinstance(source, CorpusSource) and not has_summary:
            check_corpus_available(source, None, path.stem)
        for file in source.audio_files():
            if (file, settings.sample_rate, settings.window_samples) not in checked:
                read_source_file(file, source_key(source), settings.sample_rate, settings.window_samples)
                checked.add((file, settings.sample_rate, settings.window_samples))


def check_corpus_available(source: SourceConfig, summary: TrainingSummary | None, model_name: str) -> None:
    """source=corpus needs the training windows a format-2 checkpoint keeps."""
    if isinstance(source, CorpusSource) and summary is None:
        raise ConfigError(
            "source",
            "corpus",
            f"a model that keeps its training windows (checkpoint format 2); model {model_name!r} has none: "
            "retrain it with this sda",
        )


# ---------------------------------------------------------------------------------------------
# Latent sources


class LatentSource:
    """The latents of the windows a chunking mode decodes (see the module docstring)."""

    def __init__(self, latent_dim: int) -> None:
        self.latent_dim = latent_dim

    def latents(self, item_seed: int, voice_seed: int, centres_s: torch.Tensor) -> torch.Tensor:
        """`[len(centres_s), latent_dim]` float32 on the CPU for one voice; `centres_s` float64 `[n]`."""
        raise NotImplementedError

    @property
    def files(self) -> tuple[SourceFile, ...]:
        return ()


class PriorLatents(LatentSource):
    def latents(self, item_seed: int, voice_seed: int, centres_s: torch.Tensor) -> torch.Tensor:
        return seeding.sample_latents(voice_seed, centres_s.shape[0], self.latent_dim)


class SpreadLatents(LatentSource):
    """A source's own latents (`base`), moved towards the prior's by `spread`."""

    def __init__(self, latent_dim: int, spread: float) -> None:
        super().__init__(latent_dim)
        self.spread = float(spread)

    def base(self, item_seed: int, centres_s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latents(self, item_seed: int, voice_seed: int, centres_s: torch.Tensor) -> torch.Tensor:
        base = self.base(item_seed, centres_s)
        if self.spread == 0.0:
            return base
        noise = seeding.sample_latents(voice_seed, centres_s.shape[0], self.latent_dim)
        return math.sqrt(1.0 - self.spread**2) * base + self.spread * noise


class Trajectory:
    """The posterior means of one file's model windows, by centre time (see the module docstring).
    Every window is encoded once per pipeline and kept."""

    def __init__(
        self, file: SourceFile, encoder: torch.nn.Module, settings: SpectrogramSettings, offset_s: float = 0.0
    ) -> None:
        self.file = file
        self.encoder = encoder
        self.settings = settings
        self.offset_s = float(offset_s)
        self._encoded: dict[int, torch.Tensor] = {}

    def window_starts(self, centres_s: torch.Tensor) -> list[int]:
        """First sample in the file of the window centred at each time (the file looped)."""
        length, window = self.file.audio.shape[0], self.settings.window_samples
        centres = torch.round((centres_s.double() + self.offset_s) * self.file.sample_rate).long() % length
        return (centres - window // 2).clamp(0, length - window).tolist()

    def at(self, centres_s: torch.Tensor) -> torch.Tensor:
        """`[n, latent_dim]` float32 on the CPU."""
        starts = self.window_starts(centres_s)
        for start in dict.fromkeys(starts):
            if start not in self._encoded:
                self._encoded[start] = self._encode(start)
        return torch.stack([self._encoded[start] for start in starts])

    @torch.inference_mode()
    def _encode(self, start: int) -> torch.Tensor:
        parameter = next(self.encoder.parameters())
        window = self.file.audio[start : start + self.settings.window_samples][None].to(parameter.device)
        mu, _ = self.encoder.encode(log_mel(window, self.settings).to(parameter.dtype))
        return mu[0].float().cpu()


class FileLatents(SpreadLatents):
    def __init__(self, latent_dim: int, spread: float, trajectory: Trajectory) -> None:
        super().__init__(latent_dim, spread)
        self.trajectory = trajectory

    def base(self, item_seed: int, centres_s: torch.Tensor) -> torch.Tensor:
        return self.trajectory.at(centres_s)

    @property
    def files(self) -> tuple[SourceFile, ...]:
        return (self.trajectory.file,)


class MorphLatents(SpreadLatents):
    def __init__(self, latent_dim: int, spread: float, trajectories: Sequence[Trajectory], duration_s: float) -> None:
        super().__init__(latent_dim, spread)
        self.trajectories = list(trajectories)
        self.duration_s = float(duration_s)

    def base(self, item_seed: int, centres_s: torch.Tensor) -> torch.Tensor:
        last = len(self.trajectories) - 1
        position = (centres_s.double() / self.duration_s).clamp(0.0, 1.0) * last
        lower = position.floor().long().clamp(max=last - 1)
        fraction = (position - lower.double()).float()
        pairs = torch.empty(2, centres_s.shape[0], self.latent_dim)
        for k, trajectory in enumerate(self.trajectories):
            for side, rows in ((0, lower == k), (1, lower + 1 == k)):
                if bool(rows.any()):
                    pairs[side, rows] = trajectory.at(centres_s[rows])
        return slerp(pairs[0], pairs[1], fraction)

    @property
    def files(self) -> tuple[SourceFile, ...]:
        return tuple(t.file for t in self.trajectories)


class CorpusLatents(SpreadLatents):
    def __init__(self, latent_dim: int, spread: float, summary: TrainingSummary) -> None:
        super().__init__(latent_dim, spread)
        self.summary = summary

    def base(self, item_seed: int, centres_s: torch.Tensor) -> torch.Tensor:
        rows = self.rows(item_seed, centres_s.shape[0])
        return self.summary.latents[rows].float()

    def rows(self, item_seed: int, count: int) -> torch.Tensor:
        """The training windows an item draws, in order (the first k are the same for any count)."""
        generator = seeding.corpus_generator(item_seed)
        return torch.randint(len(self.summary), (count,), generator=generator)


def build_latent_source(
    source: SourceConfig,
    latent_dim: int,
    summary: TrainingSummary | None,
    model_name: str,
    encoder: torch.nn.Module,
    settings: SpectrogramSettings,
    duration_s: float,
) -> LatentSource:
    """The latent source a config asks for; reads and checks its files (one-line ConfigError).
    `encoder` is the VAE that encodes source windows (its parameters' device and dtype are used)."""
    if isinstance(source, PriorSource):
        return PriorLatents(latent_dim)
    if isinstance(source, CorpusSource):
        check_corpus_available(source, summary, model_name)
        assert summary is not None
        return CorpusLatents(latent_dim, source.spread, summary)
    key = source_key(source)
    files = [read_source_file(p, key, settings.sample_rate, settings.window_samples) for p in source.audio_files()]
    if isinstance(source, FileSource):
        return FileLatents(latent_dim, source.spread, Trajectory(files[0], encoder, settings, source.offset_s))
    if isinstance(source, MorphSource):
        trajectories = [Trajectory(file, encoder, settings) for file in files]
        return MorphLatents(latent_dim, source.spread, trajectories, duration_s)
    raise TypeError(f"no latent source for source option {type(source).__name__}")
