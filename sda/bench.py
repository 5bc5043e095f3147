"""`python -m sda.bench`: throughput and memory of the reference path against the batched path.

    python -m sda.bench                                  # 16 seeds x 10 s, mono and dual_seed
    python -m sda.bench --seeds 1 --duration-s 600 --paths default --stereo mono   # one long file

reference: one seed at a time, one chunk at a time: each latent decoded alone, a least-squares
           inverse mel (torchaudio InverseMelScale) and 128 iterations of torchaudio's GriffinLim.
default:   the pipeline as configured: every chunk of every seed of a batch decoded in one pass,
           pseudo-inverse mel and Griffin-Lim over the whole batch (sda.config.PhaseConfig).

Both share every other stage (anti-alias, stereo, normalise, resample, metrics, export), so the
difference is the batching and the phase reconstruction. Each path runs in its own spawned
process, so its peak resident memory is its own; a short warm-up (caches, kernels) comes first
and is not timed. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sda import seeds as seeding
from sda.config import OPTIONS, CrossfadeChunking, GenerationConfig, OneshotChunking
from sda.dsp.chunking import (
    cola_window,
    crossfade_layout,
    equal_power_crossfade,
    interpolate_anchors,
    latent_interp_layout,
    oneshot_layout,
    overlap_add_frames,
)
from sda.dsp.phase import reference_reconstruct
from sda.model import load_model
from sda.outputs import save_result
from sda.pipeline import STAGES as PIPELINE_STAGES
from sda.pipeline import GenerationPipeline, RenderedVoices, StageClock
from sda.versions import versions

STAGES = (*PIPELINE_STAGES, "export")


class ReferencePipeline(GenerationPipeline):
    """The straightforward path: per seed, per chunk, torchaudio's least-squares inverse mel and
    128 Griffin-Lim iterations (sda.dsp.phase.reference_reconstruct). Only `render_voices`
    differs from the batched pipeline; the chunk and window layouts are the pipeline's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_size = 1

    def render_voices(self, voice_seeds: Sequence[int], samples: int, clock: StageClock) -> RenderedVoices:
        return RenderedVoices(torch.cat([self._render_one(seed, samples, clock) for seed in voice_seeds]))

    def _render_one(self, seed: int, samples: int, clock: StageClock) -> torch.Tensor:
        cfg, s = self.config.chunking, self.settings
        dim = self.model.latent_dim
        if isinstance(cfg, CrossfadeChunking):
            layout = crossfade_layout(samples, s.sample_rate, s.window_samples, cfg.chunk_s, cfg.overlap_ms)
            latents = seeding.sample_latents(seed, layout.n_chunks, dim).to(self.device)
            pieces = []
            for i in range(layout.n_chunks):
                with clock.stage("decode"):
                    log_mel = self._decode(latents[i : i + 1])
                with clock.stage("phase"):
                    audio = reference_reconstruct(log_mel, s, s.window_samples, seed * 1000 + i)
                pieces.append(audio[:, layout.start : layout.start + layout.chunk])
            with clock.stage("dsp"):
                joined = equal_power_crossfade(torch.stack(pieces, dim=1).unsqueeze(2), layout.overlap)
            return joined[..., :samples]
        if isinstance(cfg, OneshotChunking):
            shot = oneshot_layout(samples, s.window_samples, s.hop_length)
            with clock.stage("decode"):
                log_mel = self._decode(seeding.sample_latents(seed, 1, dim).to(self.device))
                log_mel = torch.nn.functional.pad(log_mel, (shot.pre_roll_frames, 0))
            with clock.stage("phase"):
                audio = reference_reconstruct(log_mel, s, shot.length, seed)
            return audio[:, shot.start :].unsqueeze(1)
        layout = latent_interp_layout(samples, s.sample_rate, s.hop_length, s.window_frames, cfg.anchor_interval_s)
        anchors = seeding.sample_latents(seed, layout.n_anchors, dim).to(self.device)[None]
        latents = interpolate_anchors(anchors, layout.positions.to(self.device, torch.float32))[0]
        with clock.stage("decode"):
            log_mels = torch.stack([self._decode(latents[i : i + 1])[0] for i in range(layout.n_windows)])[None]
        with clock.stage("dsp"):
            window = cola_window(layout.window_frames, layout.hop_frames, device=self.device)
            spectrogram = overlap_add_frames(log_mels, layout.hop_frames, window)
        with clock.stage("phase"):
            audio = reference_reconstruct(spectrogram, s, layout.length, seed)
        return audio[..., :samples].unsqueeze(1)


def _peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_path(
    path: str, stereo: str, chunking: str, seeds: int, duration_s: float, device: str, batch_size: int, threads: int
) -> dict[str, Any]:
    """Measure one path in this process (called in a spawned child)."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    model = load_model("default", device)
    cls = ReferencePipeline if path == "reference" else GenerationPipeline

    def make(duration: float) -> GenerationPipeline:
        cfg = GenerationConfig(
            duration_s=duration,
            device=device,
            batch_size=batch_size,
            stereo=OPTIONS["stereo"][stereo](),
            chunking=OPTIONS["chunking"][chunking](),
        )
        return cls(model, cfg)

    with tempfile.TemporaryDirectory() as tmp:
        for result in make(1.0).generate([10_000]):  # warm-up: caches, kernels, resamplers
            save_result(result, Path(tmp))
    reset = _peak_rss_reset()
    pipeline = make(duration_s)
    stage = {name: 0.0 for name in STAGES}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = pipeline.generate(list(range(seeds)))
        for result in results:
            for name, seconds in result.timings_s.items():
                stage[name] += seconds
            t = time.perf_counter()
            save_result(result, Path(tmp))
            stage["export"] += time.perf_counter() - t
    wall = time.perf_counter() - start
    audio_s = seeds * duration_s
    return {
        "path": path,
        "stereo": stereo,
        "chunking": chunking,
        "seeds": seeds,
        "duration_s": duration_s,
        "batch_size": pipeline.batch_size,
        "wall_s": wall,
        "audio_s_per_wall_s": audio_s / wall,
        "stages_s": stage,
        "peak_rss_bytes": _peak_rss_bytes(),
        "peak_rss_is_per_run": reset,
        "device": str(pipeline.device),
        "threads": torch.get_num_threads(),
        "phase": pipeline.config.phase.to_dict()
        if path == "default"
        else {"inverse_mel": "lstsq (torchaudio)", "iterations": 128, "momentum": 0.99, "init": "random"},
    }


def _child(queue: Any, kwargs: dict[str, Any]) -> None:
    queue.put(run_path(**kwargs))


def measure_in_child(**kwargs: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(queue, kwargs))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Throughput and memory: reference path against the batched path.")
    parser.add_argument("--seeds", type=int, default=16, help="outputs per path (default 16)")
    parser.add_argument("--duration-s", type=float, default=10.0, help="seconds per output (default 10)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="items per batch for the default path (0: chosen from the device)"
    )
    parser.add_argument("--stereo", default="mono,dual_seed", help="comma-separated stereo modes")
    parser.add_argument("--chunking", default="crossfade", help="crossfade, latent_interp or oneshot")
    parser.add_argument("--paths", default="reference,default", help="comma-separated: reference, default")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=Path("bench/bench.json"))
    args = parser.parse_args(argv)
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )

    runs = []
    print(
        f"sda bench: {args.seeds} seeds x {args.duration_s:g} s at 48 kHz, {args.chunking}, "
        f"device {device}, torch {torch.__version__}"
    )
    print(
        f"{'path':10s} {'stereo':10s} {'audio s/s':>10s} {'wall s':>8s} {'decode':>8s} {'phase':>8s} "
        f"{'dsp':>8s} {'export':>8s} {'peak RSS':>10s}"
    )
    for stereo in args.stereo.split(","):
        for path in args.paths.split(","):
            run = measure_in_child(
                path=path,
                stereo=stereo,
                chunking=args.chunking,
                seeds=args.seeds,
                duration_s=args.duration_s,
                device=device,
                batch_size=args.batch_size if path == "default" else 1,
                threads=args.threads,
            )
            runs.append(run)
            st = run["stages_s"]
            print(
                f"{path:10s} {stereo:10s} {run['audio_s_per_wall_s']:10.2f} {run['wall_s']:8.1f} "
                f"{st['decode']:8.2f} {st['phase']:8.2f} "
                f"{st['dsp']:8.2f} {st['export']:8.2f} {run['peak_rss_bytes'] / 2**30:8.2f} GB",
                flush=True,
            )
    ratios = {}
    for stereo in args.stereo.split(","):
        by_path = {r["path"]: r for r in runs if r["stereo"] == stereo}
        if {"reference", "default"} <= set(by_path):
            ratios[stereo] = by_path["default"]["audio_s_per_wall_s"] / by_path["reference"]["audio_s_per_wall_s"]
            print(f"{stereo}: default path is {ratios[stereo]:.1f}x the reference's audio seconds per wall second")
    report = {
        "runs": runs,
        "speedup": ratios,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        **versions(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
