"""GenerationPipeline: seeds in, finished audio with metrics out. No Hydra, no files.

For a batch of seeds, every stage runs once over the whole batch:

    latents per voice from the source (sda.sources; the prior: CPU generators of the seeds)
    -> one decoder pass over every chunk/window of every voice -> inverse mel -> Griffin-Lim over
    the batch -> anti-alias -> stereo -> peak normalize -> resample (only here, to the export
    rate) -> [one-shots: tail trimmed] -> level (peak or loudness) -> exact-length trim
    -> quality metrics -> memorization check (sda.memorization)

One-shots (`chunking=oneshot`) are one model window per voice, reconstructed from its start and
ended where the sound ends: each has its own length, at most duration_s and one window.

A "voice" is one mono generation: a mono or mid_side item has one, a dual_seed item two (its left
seed and its derived right seed; voices are ordered all left voices, then all right voices).
Every chunking mode asks the source for the latents of the windows it decodes, by their centre
times (`voice_latents`), so a new mode needs no source code of its own. Everything up to the
final copy to host memory stays on the pipeline's device. An item's audio depends only on its
seed, the config and the source files, never on the batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import torch

from sda import seeds as seeding
from sda.config import (
    INTERNAL_SAMPLE_RATE,
    CrossfadeChunking,
    DualSeedStereo,
    GenerationConfig,
    LatentInterpChunking,
    MidSideStereo,
    OneshotChunking,
)
from sda.dsp.chunking import (
    CrossfadeLayout,
    LatentInterpLayout,
    OneshotLayout,
    cola_window,
    crossfade_layout,
    equal_power_crossfade,
    interpolate_anchors,
    latent_interp_layout,
    oneshot_layout,
    overlap_add_frames,
)
from sda.dsp.finish import Finished, FinishSettings, ItemLevel, OneshotEnd, finish
from sda.dsp.loudness import Levels, amplitude_dbtp, true_peak
from sda.dsp.phase import griffin_lim, inverse_mel
from sda.dsp.picture import PictureSettings, spectrogram_levels_batch
from sda.dsp.quality import QualityMetrics, measure_quality_batch
from sda.dsp.spectrogram import decompress
from sda.errors import CheckpointError, ConfigError
from sda.host_memory import keep_freed_memory
from sda.memorization import MemorizationCheck, check_output, rated
from sda.model import LoadedModel
from sda.novelty import window_fingerprints
from sda.sources import LatentSource, build_latent_source

log = logging.getLogger(__name__)

STAGES = ("decode", "phase", "dsp", "memorization")
# The decoder runs in float64 and its output is rounded to float32. Why: oneDNN picks its kernels
# (and so its rounding) by batch size, and Griffin-Lim amplifies differences of 1e-7 in its input
# magnitude to 1e-3 in the audio (phases of near-zero bins flip). Rounding float64 results to
# float32 removes the batch-size dependence, so an item's audio is the same in any batch.
DECODE_DTYPE = torch.float64
# Spectrogram frames per Griffin-Lim call (CPU, GPU): on a CPU about 20 one-second windows, the
# fastest measured (`python -m sda.bench --seeds 1 --duration-s 600`); a GPU takes all it gets.
PHASE_FRAMES_PER_GROUP = {False: 2048, True: 1 << 22}
# Latents per decoder pass (CPU, GPU).
DECODE_GROUP = {False: 128, True: 8192}
# Decoded windows fingerprinted for the memorization check per call: a GPU batch's windows reach
# host memory this many at a time (a long render's are gigabytes).
FINGERPRINT_GROUP = 256
# Generated beyond the requested length at 48 kHz, so the resampled signal always covers the
# exact frame count; trimmed off at the end.
MARGIN_SAMPLES = 256


@dataclass(frozen=True)
class GenerationResult:
    """One finished output. `audio` is `[channels, frames]` float32 at `sample_rate`: exactly
    round(duration_s * sample_rate) frames (a one-shot: its own length, at most that), sample peak
    at most -1 dBFS. `level`: its loudness and true peak, and what a loudness normalization did."""

    seed: int
    right_seed: int | None
    audio: np.ndarray
    sample_rate: int
    metrics: QualityMetrics
    config: GenerationConfig
    model_name: str
    model_sha256: str
    device: str
    started_at: datetime
    finished_at: datetime
    timings_s: dict[str, float] = field(default_factory=dict)
    level: ItemLevel | None = None
    memorization: MemorizationCheck | None = None  # None: not checked (a result made outside the pipeline)
    source_files: tuple[dict[str, str], ...] = ()  # each file the source read: path (as given) and sha256
    # `[height, width]` levels of the report's picture, when the pipeline was asked for them
    spectrogram_db: np.ndarray | None = None
    # (fingerprints, starts) of the windows the model decoded for it, until its memorization check
    decoded_windows: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)

    @property
    def channels(self) -> int:
        return int(self.audio.shape[0])

    @property
    def frames(self) -> int:
        return int(self.audio.shape[1])

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class RenderedVoices:
    """What a chunking mode renders: mono `audio` `[V, 1, samples]` at 48 kHz (voices ordered as
    in the module docstring) and, when the mode phase-reconstructs every decoded window on its
    own, the sda.novelty fingerprints of those windows `[V, n, FINGERPRINT_DIMS]` and where each
    starts in the output, `window_starts_s` `[n]` (for the memorization check)."""

    audio: torch.Tensor
    window_prints: torch.Tensor | None = None
    window_starts_s: torch.Tensor | None = None

    def cut(self, samples: int, sample_rate: int) -> RenderedVoices:
        """The first `samples` of the audio, and the windows that start within them."""
        if self.window_prints is None or self.window_starts_s is None:
            return RenderedVoices(self.audio[..., :samples])
        kept = self.window_starts_s * sample_rate < samples
        return RenderedVoices(self.audio[..., :samples], self.window_prints[:, kept], self.window_starts_s[kept])

    def item_windows(self, item: int, items: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(fingerprints `[W, FINGERPRINT_DIMS]`, starts `[W]`) of every voice of item `item` of
        `items` (a dual_seed item's voices are `item` and `item + items`), or (None, None)."""
        if self.window_prints is None or self.window_starts_s is None:
            return None, None
        voices = self.window_prints[item::items]
        return voices.reshape(-1, voices.shape[-1]), self.window_starts_s.repeat(voices.shape[0])


class StageClock:
    """Wall time per stage; synchronizes CUDA at stage boundaries so times are real."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {stage: 0.0 for stage in STAGES}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def default_batch_size(device: torch.device) -> int:
    """Items per batch when `batch_size=0`. A GPU wants as much work per call as fits (64; an
    out-of-memory batch is halved). On a CPU, where Griffin-Lim already runs in cache-sized
    groups, the batch size barely changes throughput and one item (all its chunks in one decoder
    pass) uses the least memory (`python -m sda.bench --paths default --batch-size N`: mono 45
    audio s/s at 1, 40 at 8; dual_seed 18 and 19; peak 0.82 GB against 1.35 GB)."""
    return 64 if device.type == "cuda" else 1


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


class GenerationPipeline:
    """Turns seeds into GenerationResults for one model and one GenerationConfig.

    >>> pipeline = GenerationPipeline(load_model("default"), GenerationConfig(duration_s=5))
    >>> result = pipeline.generate([7])[0]
    """

    def __init__(
        self,
        model: LoadedModel,
        config: GenerationConfig,
        device: str | torch.device | None = None,
        picture: PictureSettings | None = None,
        defer_memorization: bool = False,
    ) -> None:
        """`picture`: also compute each item's spectrogram-picture levels (sda.dsp.picture) with
        the batch, where its audio is (`GenerationResult.spectrogram_db`). `defer_memorization`:
        leave each result's memorization check to `check_memorization`, which the caller runs
        where it suits (sda.runner: with the writing, on writer threads beside a GPU)."""
        self.config = config
        self.picture = picture
        self.defer_memorization = defer_memorization
        self.device = torch.device(device) if device is not None else config.resolved_device()
        if self.device.type == "cpu":
            keep_freed_memory()  # each item's blocks are reused, not faulted in again (sda.host_memory)
        self.model = model
        self.decoder = model.decoding_copy(self.device, DECODE_DTYPE)
        self.settings = model.settings
        if self.settings.sample_rate != INTERNAL_SAMPLE_RATE:
            raise CheckpointError(
                f"model {model.name!r} works at {self.settings.sample_rate} Hz; "
                f"the pipeline needs {INTERNAL_SAMPLE_RATE} Hz models"
            )
        check_against_model(config, model)
        self.source: LatentSource = build_latent_source(
            config.source, model.latent_dim, model.summary, model.name, self.decoder, self.settings, config.duration_s
        )
        self.batch_size = config.batch_size or default_batch_size(self.device)
        self.phase_frames_per_group = PHASE_FRAMES_PER_GROUP[self.device.type == "cuda"]
        self.decode_group = DECODE_GROUP[self.device.type == "cuda"]
        self.last_batch_sizes: list[int] = []
        stereo, chunking, export = config.stereo, config.chunking, config.export
        oneshot = isinstance(chunking, OneshotChunking)
        self.finish_settings = FinishSettings(
            stereo=stereo.mode,
            width=stereo.width if isinstance(stereo, MidSideStereo) else 1.0,
            haas_ms=stereo.haas_ms if isinstance(stereo, MidSideStereo) else 0.0,
            output_sample_rate=export.sample_rate,
            normalize=export.normalize.value,
            loudness_lufs=export.loudness_lufs,
            true_peak_dbtp=export.true_peak_dbtp,
            oneshot=OneshotEnd(chunking.silence_db, chunking.fade_ms) if oneshot else None,
        )

    # ----------------------------------------------------------------------------------------
    def generate(self, seeds: Sequence[int] | int | None = None) -> list[GenerationResult]:
        """Generate one result per seed (default: the config's seeds), in batches. A batch that
        does not fit in GPU memory is halved and retried, down to one item."""
        if seeds is None:
            seeds = self.config.seeds
        elif isinstance(seeds, int):
            seeds = [seeds]
        seeds = list(seeds)
        for seed in seeds:
            if isinstance(seed, bool) or not 0 <= int(seed) < seeding.SEED_SPACE:
                raise ConfigError("seed", seed, "an integer in [0, 2^32)")
        results: list[GenerationResult] = []
        self.last_batch_sizes = []
        batch_size = self.batch_size
        position = 0
        while position < len(seeds):
            batch = seeds[position : position + batch_size]
            failed = False
            try:
                results.extend(self.generate_batch(batch))
            except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error) or batch_size == 1:
                    raise
                failed = True
            if failed:
                # Outside the except block, so the failed attempt's tensors (held by the
                # traceback) are already released before the cache is emptied.
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                log.warning("out of memory with %d items per batch; retrying with %d", len(batch), batch_size)
                continue
            self.last_batch_sizes.append(len(batch))
            position += len(batch)
        return results

    @torch.inference_mode()
    def generate_batch(self, seeds: Sequence[int]) -> list[GenerationResult]:
        """All stages once over `seeds`; returns results in the same order."""
        cfg = self.config
        started = datetime.now(UTC)
        clock = StageClock(self.device)
        dual = isinstance(cfg.stereo, DualSeedStereo)
        right_seeds = [seeding.right_seed(s) for s in seeds] if dual else []
        needed = math.ceil(cfg.duration_s * self.settings.sample_rate) + MARGIN_SAMPLES

        rendered = self.render_voices(list(seeds) + right_seeds, needed, clock)
        with clock.stage("dsp"):
            finished = finish(rendered.audio, self.settings.sample_rate, self.finish_settings, self.output_frames())
            metrics = measure_quality_batch(finished.audio, cfg.export.sample_rate, finished.frames)
            # What every sidecar records: the delivered audio's loudness (the quality metrics'
            # measurement) and true peak, and what a loudness normalization did.
            levels = [
                ItemLevel(
                    Levels(metrics[i].loudness_lufs, amplitude_dbtp(true_peak(finished.item(i)))),
                    finished.loudness[i],
                )
                for i in range(len(seeds))
            ]
            pictures = self.pictures(finished, cfg.export.sample_rate)
            host = finished.audio.float().cpu().numpy()
        windows = [rendered.item_windows(i, len(seeds)) for i in range(len(seeds))]
        source_files = tuple({"path": f.path, "sha256": f.sha256} for f in self.source.files)
        finished_at = datetime.now(UTC)
        share = {stage: seconds / len(seeds) for stage, seconds in clock.seconds.items()}
        results = [
            GenerationResult(
                seed=int(seed),
                right_seed=right_seeds[i] if dual else None,
                audio=np.ascontiguousarray(host[i, :, : finished.frames[i]]),
                sample_rate=cfg.export.sample_rate,
                metrics=metrics[i],
                config=cfg,
                model_name=self.model.name,
                model_sha256=self.model.sha256,
                device=str(self.device),
                started_at=started,
                finished_at=finished_at,
                timings_s=dict(share),
                level=levels[i],
                source_files=source_files,
                spectrogram_db=pictures[i] if pictures is not None else None,
                decoded_windows=windows[i],
            )
            for i, seed in enumerate(seeds)
        ]
        return results if self.defer_memorization else [self.check_memorization(r) for r in results]

    def check_memorization(self, result: GenerationResult) -> GenerationResult:
        """`result` with its memorization check (sda.memorization) and its metrics rated by it;
        the time it took is added to its `timings_s["memorization"]`. Thread-safe: it reads the
        model's training summary and the result only."""
        started = time.perf_counter()
        check = check_output(
            self.model.summary, result.audio, result.sample_rate, self.config.quality, *result.decoded_windows
        )
        timings = {**result.timings_s}
        timings["memorization"] = timings.get("memorization", 0.0) + time.perf_counter() - started
        return replace(
            result,
            metrics=rated(result.metrics, check),
            memorization=check,
            decoded_windows=(None, None),
            timings_s=timings,
        )

    def pictures(self, finished: Finished, sample_rate: int) -> list[np.ndarray] | None:
        """Each item's report-spectrogram levels `[height, width]` (first channel), computed where
        the audio is; None unless the pipeline was asked for them (never for one-shots)."""
        if self.picture is None or self.finish_settings.oneshot is not None:  # a one-shot's is its waveform
            return None
        return list(spectrogram_levels_batch(finished.audio[:, 0], sample_rate, self.picture).cpu().numpy())

    def output_frames(self) -> int:
        """Frames of every output at the export rate: round(duration_s * rate); for one-shots the
        most a hit may have (one model window at most)."""
        cfg = self.config
        frames = round(cfg.duration_s * cfg.export.sample_rate)
        if isinstance(cfg.chunking, OneshotChunking):
            window = self.settings.window_samples * cfg.export.sample_rate // self.settings.sample_rate
            frames = min(frames, window)
        return frames

    # ----------------------------------------------------------------------------------------
    def render_voices(self, voice_seeds: Sequence[int], samples: int, clock: StageClock) -> RenderedVoices:
        """Mono audio `[V, 1, samples]` at 48 kHz for each voice seed, by the chunking mode."""
        chunking = self.config.chunking
        if isinstance(chunking, CrossfadeChunking):
            layout = crossfade_layout(
                samples, self.settings.sample_rate, self.settings.window_samples, chunking.chunk_s, chunking.overlap_ms
            )
            return self._render_crossfade(voice_seeds, layout, clock).cut(samples, self.settings.sample_rate)
        if isinstance(chunking, LatentInterpChunking):
            layout = latent_interp_layout(
                samples,
                self.settings.sample_rate,
                self.settings.hop_length,
                self.settings.window_frames,
                chunking.anchor_interval_s,
            )
            return RenderedVoices(self._render_latent_interp(voice_seeds, layout, clock)[..., :samples])
        if isinstance(chunking, OneshotChunking):
            layout = oneshot_layout(samples, self.settings.window_samples, self.settings.hop_length)
            return RenderedVoices(self._render_oneshot(voice_seeds, layout, clock))
        raise TypeError(f"no renderer for chunking option {type(chunking).__name__}")

    def voice_latents(self, voice_seeds: Sequence[int], centres_s: torch.Tensor) -> torch.Tensor:
        """`[V, n, latent_dim]` (CPU): each voice's latents, from the source, for the windows
        centred at `centres_s` `[n]` (seconds into the output). Right voices (the second half for
        dual_seed) share their item's source and draw their own noise."""
        items = len(voice_seeds) // 2 if isinstance(self.config.stereo, DualSeedStereo) else len(voice_seeds)
        item_seeds = list(voice_seeds[:items]) * (len(voice_seeds) // items if items else 0)
        return torch.stack(
            [self.source.latents(item, voice, centres_s) for item, voice in zip(item_seeds, voice_seeds, strict=True)]
        )

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decoder passes over `[N, latent_dim]` -> float32 log-mels `[N, n_mels, frames]`: one
        pass for a batch's every chunk, split only past `decode_group` latents so a long render
        never holds every window's float64 activations at once (over 1 GB for 600 s)."""
        latents = latents.to(DECODE_DTYPE)
        return torch.cat([self.decoder.decode(part).float() for part in latents.split(self.decode_group)])

    def _phase(self, log_mels: torch.Tensor, length: int, generators: list[torch.Generator] | None) -> torch.Tensor:
        """Log-mels `[N, n_mels, T]` -> audio `[N, length]`, in groups of items whose frames add
        up to about `phase_frames_per_group`: on a CPU a group that fits in cache runs several
        times faster, and a long render never holds every window's spectrograms at once.
        Griffin-Lim treats items independently, so the grouping does not change the audio."""
        phase = self.config.phase
        per_group = max(1, self.phase_frames_per_group // log_mels.shape[-1])
        pieces = []
        for start in range(0, log_mels.shape[0], per_group):
            magnitude = inverse_mel(
                decompress(log_mels[start : start + per_group]), self.settings, phase.inverse_mel.value
            )
            pieces.append(
                griffin_lim(
                    magnitude,
                    self.settings,
                    length=length,
                    iterations=phase.iterations,
                    momentum=phase.momentum,
                    init=phase.init.value,
                    generators=generators[start : start + per_group] if generators is not None else None,
                )
            )
        return torch.cat(pieces)

    def _phase_generators(self, voice_seeds: Sequence[int], items_per_voice: int) -> list[torch.Generator] | None:
        """Random starting phases, when asked for, come from per-voice generators (drawn in
        voice order, item by item), so they do not depend on the batch."""
        if self.config.phase.init.value != "random":
            return None
        gens = []
        for seed in voice_seeds:
            g = seeding.phase_generator(seed)
            gens.extend([g] * items_per_voice)
        return gens

    def _render_crossfade(
        self, voice_seeds: Sequence[int], layout: CrossfadeLayout, clock: StageClock
    ) -> RenderedVoices:
        """`[V, 1, layout.total]`: a latent per chunk, every chunk of every voice decoded in one
        pass and phase-reconstructed together, joined by crossfades; with the fingerprints of the
        decoded windows when the model keeps renditions of its training windows."""
        latent_dim = self.model.latent_dim
        with clock.stage("decode"):
            centres_s = (torch.arange(layout.n_chunks, dtype=torch.float64) * layout.hop + layout.chunk / 2) / (
                self.settings.sample_rate
            )
            latents = self.voice_latents(voice_seeds, centres_s)  # [V, n_chunks, D]
            log_mels = self._decode(latents.to(self.device).reshape(-1, latent_dim))  # [V * n_chunks, n_mels, T]
        with clock.stage("phase"):
            audio = self._phase(log_mels, layout.window, self._phase_generators(voice_seeds, layout.n_chunks))
            chunks = audio[:, layout.start : layout.start + layout.chunk]
            chunks = chunks.reshape(len(voice_seeds), layout.n_chunks, 1, layout.chunk)
        prints = None
        if self.model.summary is not None and self.model.summary.renditions is not None:
            with clock.stage("memorization"):
                prints = torch.cat([window_fingerprints(part.cpu()) for part in audio.split(FINGERPRINT_GROUP)])
                prints = prints.reshape(len(voice_seeds), layout.n_chunks, -1)
        with clock.stage("dsp"):
            joined = equal_power_crossfade(chunks, layout.overlap)
        starts_s = torch.arange(layout.n_chunks, dtype=torch.float64) * layout.hop / self.settings.sample_rate
        return RenderedVoices(joined, prints, starts_s)

    def _render_latent_interp(
        self, voice_seeds: Sequence[int], layout: LatentInterpLayout, clock: StageClock
    ) -> torch.Tensor:
        """`[V, 1, layout.length]`: latents slerped between anchors, decoded windows overlap-added
        into one spectrogram per voice, one phase reconstruction per voice."""
        latent_dim = self.model.latent_dim
        with clock.stage("decode"):
            # anchor k sits at position k, the centre of a window at k * anchor_interval_s
            anchor_interval_s = self.config.chunking.anchor_interval_s
            anchors = self.voice_latents(
                voice_seeds, torch.arange(layout.n_anchors, dtype=torch.float64) * anchor_interval_s
            )
            positions = layout.positions.to(self.device, torch.float32)
            latents = interpolate_anchors(anchors.to(self.device), positions)  # [V, n_windows, D]
            log_mels = self._decode(latents.reshape(-1, latent_dim))
            log_mels = log_mels.reshape(len(voice_seeds), layout.n_windows, *log_mels.shape[-2:])
        with clock.stage("dsp"):
            window = cola_window(layout.window_frames, layout.hop_frames, device=self.device)
            spectrogram = overlap_add_frames(log_mels, layout.hop_frames, window)  # [V, n_mels, total_frames]
        with clock.stage("phase"):
            audio = self._phase(spectrogram, layout.length, self._phase_generators(voice_seeds, 1))
        return audio.unsqueeze(1)

    def _render_oneshot(self, voice_seeds: Sequence[int], layout: OneshotLayout, clock: StageClock) -> torch.Tensor:
        """`[V, 1, layout.window]`: one latent per voice (from the source, for the window at the
        output's start: the prior's is its seed's first), one decoded window, reconstructed from
        its start after silence (see OneshotLayout): the window as the model made it, attack
        first, nothing cut from it and nothing joined to it. Where it ends is the finishing
        chain's business."""
        centre_s = torch.tensor([self.settings.window_samples / 2 / self.settings.sample_rate], dtype=torch.float64)
        with clock.stage("decode"):
            latents = self.voice_latents(voice_seeds, centre_s)[:, 0]  # [V, D]
            log_mels = self._decode(latents.to(self.device))  # [V, n_mels, T]
            log_mels = torch.nn.functional.pad(log_mels, (layout.pre_roll_frames, 0))  # log1p(0): silence
        with clock.stage("phase"):
            audio = self._phase(log_mels, layout.length, self._phase_generators(voice_seeds, 1))[:, layout.start :]
        return audio.unsqueeze(1)


def check_against_model(config: GenerationConfig, model: LoadedModel) -> None:
    """Checks that need the model's settings (run after loading, before any file is written)."""
    window_s = model.settings.window_samples / model.settings.sample_rate
    if isinstance(config.chunking, CrossfadeChunking) and config.chunking.chunk_s > window_s + 1e-9:
        raise ConfigError(
            "chunking.chunk_s",
            config.chunking.chunk_s,
            f"at most the model's window of {window_s:g} s (model {model.name!r})",
        )
