"""GenerationPipeline: seeds in, finished audio with metrics out. No Hydra, no files.

For a batch of seeds, every stage runs once over the whole batch:

    latents per seed (CPU generators) -> one decoder pass over every chunk/window of every voice
    -> inverse mel -> Griffin-Lim over the batch -> anti-alias -> stereo -> peak normalise
    -> resample (only here, to the export rate) -> quality metrics -> exact-length trim

A "voice" is one mono generation: a mono or mid_side item has one, a dual_seed item two (its left
seed and its derived right seed). Everything up to the final copy to host memory stays on the
pipeline's device. An item's audio depends only on its seed and the config, never on the batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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
)
from sda.dsp.chunking import (
    CrossfadeLayout,
    LatentInterpLayout,
    cola_window,
    crossfade_layout,
    equal_power_crossfade,
    interpolate_anchors,
    latent_interp_layout,
    overlap_add_frames,
)
from sda.dsp.finish import FinishSettings, finish
from sda.dsp.phase import griffin_lim, inverse_mel
from sda.dsp.picture import PictureSettings, spectrogram_levels_batch
from sda.dsp.quality import QualityMetrics, measure_quality_batch
from sda.dsp.spectrogram import decompress
from sda.errors import CheckpointError, ConfigError
from sda.model import LoadedModel

log = logging.getLogger(__name__)

STAGES = ("decode", "phase", "dsp")
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
# Generated beyond the requested length at 48 kHz, so the resampled signal always covers the
# exact frame count; trimmed off at the end.
MARGIN_SAMPLES = 256


@dataclass(frozen=True)
class GenerationResult:
    """One finished output. `audio` is `[channels, frames]` float32 at `sample_rate`, exactly
    round(duration_s * sample_rate) frames, peak at most -1 dBFS."""

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
    # `[height, width]` levels of the report's picture, when the pipeline was asked for them
    spectrogram_db: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return int(self.audio.shape[0])

    @property
    def frames(self) -> int:
        return int(self.audio.shape[1])

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class StageClock:
    """Wall time per stage; synchronises CUDA at stage boundaries so times are real."""

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
    ) -> None:
        """`picture`: also compute each item's spectrogram-picture levels (sda.dsp.picture) with
        the batch, where its audio is (`GenerationResult.spectrogram_db`)."""
        self.config = config
        self.picture = picture
        self.device = torch.device(device) if device is not None else config.resolved_device()
        self.model = model
        self.decoder = model.decoding_copy(self.device, DECODE_DTYPE)
        self.settings = model.settings
        if self.settings.sample_rate != INTERNAL_SAMPLE_RATE:
            raise CheckpointError(
                f"model {model.name!r} works at {self.settings.sample_rate} Hz; "
                f"the pipeline needs {INTERNAL_SAMPLE_RATE} Hz models"
            )
        check_against_model(config, model)
        self.batch_size = config.batch_size or default_batch_size(self.device)
        self.phase_frames_per_group = PHASE_FRAMES_PER_GROUP[self.device.type == "cuda"]
        self.decode_group = DECODE_GROUP[self.device.type == "cuda"]
        self.last_batch_sizes: list[int] = []
        stereo = config.stereo
        self.finish_settings = FinishSettings(
            stereo=stereo.mode,
            width=stereo.width if isinstance(stereo, MidSideStereo) else 1.0,
            haas_ms=stereo.haas_ms if isinstance(stereo, MidSideStereo) else 0.0,
            output_sample_rate=config.export.sample_rate,
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

        voices = self.render_voices(list(seeds) + right_seeds, needed, clock)  # [V, 1, needed]
        with clock.stage("dsp"):
            frames = round(cfg.duration_s * cfg.export.sample_rate)
            audio = finish(voices, self.settings.sample_rate, self.finish_settings, frames)
            metrics = measure_quality_batch(audio, cfg.export.sample_rate)
            pictures = (
                spectrogram_levels_batch(audio[:, 0], cfg.export.sample_rate, self.picture).cpu().numpy()
                if self.picture is not None
                else None
            )
            host = audio.float().cpu().numpy()
        finished = datetime.now(UTC)
        share = {stage: seconds / len(seeds) for stage, seconds in clock.seconds.items()}
        return [
            GenerationResult(
                seed=int(seed),
                right_seed=right_seeds[i] if dual else None,
                audio=np.ascontiguousarray(host[i]),
                sample_rate=cfg.export.sample_rate,
                metrics=metrics[i],
                config=cfg,
                model_name=self.model.name,
                model_sha256=self.model.sha256,
                device=str(self.device),
                started_at=started,
                finished_at=finished,
                timings_s=dict(share),
                spectrogram_db=pictures[i] if pictures is not None else None,
            )
            for i, seed in enumerate(seeds)
        ]

    # ----------------------------------------------------------------------------------------
    def render_voices(self, voice_seeds: Sequence[int], samples: int, clock: StageClock) -> torch.Tensor:
        """Mono audio `[V, 1, samples]` at 48 kHz for each voice seed, by the chunking mode."""
        chunking = self.config.chunking
        if isinstance(chunking, CrossfadeChunking):
            layout = crossfade_layout(
                samples, self.settings.sample_rate, self.settings.window_samples, chunking.chunk_s, chunking.overlap_ms
            )
            return self._render_crossfade(voice_seeds, layout, clock)[..., :samples]
        if isinstance(chunking, LatentInterpChunking):
            layout = latent_interp_layout(
                samples,
                self.settings.sample_rate,
                self.settings.hop_length,
                self.settings.window_frames,
                chunking.anchor_interval_s,
            )
            return self._render_latent_interp(voice_seeds, layout, clock)[..., :samples]
        raise TypeError(f"no renderer for chunking option {type(chunking).__name__}")

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

    def _render_crossfade(self, voice_seeds: Sequence[int], layout: CrossfadeLayout, clock: StageClock) -> torch.Tensor:
        """`[V, 1, layout.total]`: an independent latent per chunk, every chunk of every voice
        decoded in one pass and phase-reconstructed together, joined by crossfades."""
        latent_dim = self.model.latent_dim
        with clock.stage("decode"):
            latents = torch.stack([seeding.sample_latents(s, layout.n_chunks, latent_dim) for s in voice_seeds])
            log_mels = self._decode(latents.to(self.device).reshape(-1, latent_dim))  # [V * n_chunks, n_mels, T]
        with clock.stage("phase"):
            audio = self._phase(log_mels, layout.window, self._phase_generators(voice_seeds, layout.n_chunks))
            chunks = audio[:, layout.start : layout.start + layout.chunk]
            chunks = chunks.reshape(len(voice_seeds), layout.n_chunks, 1, layout.chunk)
        with clock.stage("dsp"):
            return equal_power_crossfade(chunks, layout.overlap)

    def _render_latent_interp(
        self, voice_seeds: Sequence[int], layout: LatentInterpLayout, clock: StageClock
    ) -> torch.Tensor:
        """`[V, 1, layout.length]`: latents slerped between anchors, decoded windows overlap-added
        into one spectrogram per voice, one phase reconstruction per voice."""
        latent_dim = self.model.latent_dim
        with clock.stage("decode"):
            anchors = torch.stack([seeding.sample_latents(s, layout.n_anchors, latent_dim) for s in voice_seeds])
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


def check_against_model(config: GenerationConfig, model: LoadedModel) -> None:
    """Checks that need the model's settings (run after loading, before any file is written)."""
    window_s = model.settings.window_samples / model.settings.sample_rate
    if isinstance(config.chunking, CrossfadeChunking) and config.chunking.chunk_s > window_s + 1e-9:
        raise ConfigError(
            "chunking.chunk_s",
            config.chunking.chunk_s,
            f"at most the model's window of {window_s:g} s (model {model.name!r})",
        )
