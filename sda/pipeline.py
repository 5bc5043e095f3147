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
from sda.config import INTERNAL_SAMPLE_RATE, ChunkingMode, GenerationConfig, StereoMode
from sda.dsp.chunking import cola_window, equal_power_crossfade, interpolate_anchors, overlap_add_frames
from sda.dsp.filters import anti_alias
from sda.dsp.normalize import enforce_ceiling, peak_normalize
from sda.dsp.phase import griffin_lim, inverse_mel
from sda.dsp.quality import QualityMetrics, measure_quality_batch
from sda.dsp.resample import resample
from sda.dsp.spectrogram import decompress
from sda.dsp.stereo import join_dual_seed, mid_side_widen
from sda.errors import CheckpointError, ConfigError
from sda.model import LoadedModel

log = logging.getLogger(__name__)

PEAK_DBFS = -1.0
STAGES = ("decode", "phase", "dsp")
# The decoder runs in float64 and its output is rounded to float32. Why: oneDNN picks its kernels
# (and so its rounding) by batch size, and Griffin-Lim amplifies differences of 1e-7 in its input
# magnitude to 1e-3 in the audio (phases of near-zero bins flip). Rounding float64 results to
# float32 removes the batch-size dependence, so an item's audio is the same in any batch.
DECODE_DTYPE = torch.float64
# Spectrogram frames per Griffin-Lim call (CPU, GPU): on a CPU about 20 one-second windows, the
# fastest measured (`python -m sda.bench --seeds 1 --duration-s 600`); a GPU takes all it gets.
PHASE_FRAMES_PER_GROUP = {False: 2048, True: 1 << 22}
# Random starting phases use the stream of seed ^ PHASE_STREAM: XOR with a constant above 2^33
# is a bijection that keeps every voice's phase stream apart from every latent stream (left
# seeds < 2^32, right seeds < 2^33) and from each other, right channels included.
PHASE_STREAM = 0x5DA5EED << 34  # < 2^64, the generator's seed range
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

    def __init__(self, model: LoadedModel, config: GenerationConfig, device: str | torch.device | None = None) -> None:
        self.config = config
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
        sr = self.settings.sample_rate
        dual = cfg.stereo.mode == StereoMode.dual_seed
        right_seeds = [seeding.right_seed(s) for s in seeds] if dual else []
        voice_seeds = list(seeds) + right_seeds
        needed = math.ceil(cfg.duration_s * sr) + MARGIN_SAMPLES

        voices = self.render_voices(voice_seeds, needed, clock)  # [V, 1, needed]
        with clock.stage("dsp"):
            voices = anti_alias(voices, sr)
            b = len(seeds)
            if dual:
                audio = join_dual_seed(voices[:b], voices[b:])
            elif cfg.stereo.mode == StereoMode.mid_side:
                audio = mid_side_widen(voices, sr, cfg.stereo.width, cfg.stereo.haas_ms)
            else:
                audio = voices
            audio, _ = peak_normalize(audio, PEAK_DBFS)
            audio = resample(audio, sr, cfg.export.sample_rate)
            # A peak between the new rate's samples reads lower (or higher) after resampling:
            # normalise again at the output rate so every file peaks at exactly -1 dBFS.
            audio, _ = peak_normalize(audio, PEAK_DBFS)
            # The float32 product can round one step above the ceiling: never let it.
            audio, _ = enforce_ceiling(audio, PEAK_DBFS)
            frames = round(cfg.duration_s * cfg.export.sample_rate)
            if audio.shape[-1] < frames:
                raise RuntimeError(f"generated {audio.shape[-1]} frames, fewer than the {frames} needed")
            metrics = measure_quality_batch(audio[..., :frames], cfg.export.sample_rate)
            audio = audio[..., :frames]
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
            )
            for i, seed in enumerate(seeds)
        ]

    # ----------------------------------------------------------------------------------------
    def render_voices(self, voice_seeds: Sequence[int], samples: int, clock: StageClock) -> torch.Tensor:
        """Mono audio `[V, 1, samples]` at 48 kHz for each voice seed, by the chunking mode."""
        if self.config.chunking.mode == ChunkingMode.crossfade:
            return self._render_crossfade(voice_seeds, samples, clock)
        return self._render_latent_interp(voice_seeds, samples, clock)

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
            g = seeding.generator(seed ^ PHASE_STREAM)
            gens.extend([g] * items_per_voice)
        return gens

    def _render_crossfade(self, voice_seeds: Sequence[int], samples: int, clock: StageClock) -> torch.Tensor:
        cfg, settings = self.config.chunking, self.settings
        sr = settings.sample_rate
        chunk = round(cfg.chunk_s * sr)
        overlap = round(cfg.overlap_ms * sr / 1000)
        hop = chunk - overlap
        n_chunks = max(1, math.ceil((samples - overlap) / hop))
        latent_dim = self.model.latent_dim
        with clock.stage("decode"):
            latents = torch.stack([seeding.sample_latents(s, n_chunks, latent_dim) for s in voice_seeds])
            latents = latents.to(self.device).reshape(-1, latent_dim)
            log_mels = self._decode(latents)  # [V * n_chunks, n_mels, frames]
        with clock.stage("phase"):
            window = settings.window_samples
            audio = self._phase(log_mels, window, self._phase_generators(voice_seeds, n_chunks))
            start = (window - chunk) // 2  # the middle of a window: its edges reconstruct worst
            chunks = audio[:, start : start + chunk].reshape(len(voice_seeds), n_chunks, 1, chunk)
        with clock.stage("dsp"):
            joined = equal_power_crossfade(chunks, overlap)  # [V, 1, total]
        return joined[..., :samples]

    def _render_latent_interp(self, voice_seeds: Sequence[int], samples: int, clock: StageClock) -> torch.Tensor:
        cfg, settings = self.config.chunking, self.settings
        window_frames = settings.window_frames
        hop_frames = max(1, round(window_frames * cfg.window_hop_fraction))
        frames_needed = 1 + math.ceil(samples / settings.hop_length)
        n_windows = max(1, math.ceil(max(0, frames_needed - window_frames) / hop_frames) + 1)
        total_frames = (n_windows - 1) * hop_frames + window_frames
        centres_s = (
            (torch.arange(n_windows, dtype=torch.float64) * hop_frames + window_frames / 2)
            * settings.hop_length
            / settings.sample_rate
        )
        positions = centres_s / cfg.anchor_interval_s
        n_anchors = int(math.floor(positions[-1].item())) + 2
        latent_dim = self.model.latent_dim
        with clock.stage("decode"):
            anchors = torch.stack([seeding.sample_latents(s, n_anchors, latent_dim) for s in voice_seeds]).to(
                self.device
            )
            latents = interpolate_anchors(anchors, positions.to(self.device, torch.float32))  # [V, n_windows, D]
            log_mels = self._decode(latents.reshape(-1, latent_dim))
            log_mels = log_mels.reshape(len(voice_seeds), n_windows, *log_mels.shape[-2:])
        with clock.stage("dsp"):
            window = cola_window(window_frames, hop_frames, device=self.device)
            spectrogram = overlap_add_frames(log_mels, hop_frames, window)  # [V, n_mels, total_frames]
        with clock.stage("phase"):
            length = (total_frames - 1) * settings.hop_length
            audio = self._phase(spectrogram, length, self._phase_generators(voice_seeds, 1))
        return audio[..., :samples].unsqueeze(1)


def check_against_model(config: GenerationConfig, model: LoadedModel) -> None:
    """Checks that need the model's settings (run after loading, before any file is written)."""
    window_s = model.settings.window_samples / model.settings.sample_rate
    if config.chunking.chunk_s > window_s + 1e-9:
        raise ConfigError(
            "chunking.chunk_s",
            config.chunking.chunk_s,
            f"at most the model's window of {window_s:g} s (model {model.name!r})",
        )
