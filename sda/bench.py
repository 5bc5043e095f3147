"""`python -m sda.bench`: throughput and memory of the reference path against the batched path,
and (`--end-to-end`) what a user waits for: the real `python -m sda.run` process.

    python -m sda.bench                                  # 16 seeds x 10 s, mono and dual_seed
    python -m sda.bench --seeds 1 --duration-s 600 --paths default --stereo mono   # one long file
    python -m sda.bench --end-to-end --seeds 16 --stereo mono --repeats 3          # sda.run, timed

reference: one seed at a time, one chunk at a time: each latent decoded alone, a least-squares
           inverse mel (torchaudio InverseMelScale) and 128 iterations of torchaudio's GriffinLim.
default:   the pipeline as configured: every chunk of every seed of a batch decoded in one pass,
           pseudo-inverse mel and Griffin-Lim over the whole batch (sda.config.PhaseConfig).

Both share every other stage (anti-alias, stereo, normalize, resample, metrics, export), so the
difference is the batching and the phase reconstruction. Each path runs in its own spawned
process, so its peak resident memory is its own; a short warm-up (caches, kernels) comes first
and is not timed. The export of these pipeline-only figures is `save_result` item after item.
Prints a table and writes JSON.

--end-to-end: for each stereo mode, the pipeline-only figure of the default path (on
`--pipeline-seeds` seeds), then `python -m sda.run count=N duration_s=D ...` run `--repeats`
times into a temporary folder, each timed from its launch to its exit; the fastest is shown with
where its wall time went (start-up, pre-flight, Hydra, rendering and writing and how much they
overlapped, the summary and report), read from its summary.json and outcome.json. Its rate
without the interpreter's start-up is recorded for pre-flight's estimates (sda.estimate).
`--writers 0,1` runs sda.run with each writer-thread setting in turn (0: chosen from the device,
the only one recorded), to show what writing beside the render costs or gains.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
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
from sda.estimate import cache_path, record_rate
from sda.files import write_json_atomic
from sda.model import load_model
from sda.outputs import OUTCOME_FILE, SUMMARY_FILE, save_result
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
        return cls(model, _config(stereo, chunking, duration, device, batch_size))

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


def _config(stereo: str, chunking: str, duration_s: float, device: str, batch_size: int = 0) -> GenerationConfig:
    """The config of a measured render: the given options, every other setting its default."""
    return GenerationConfig(
        duration_s=duration_s,
        device=device,
        batch_size=batch_size,
        stereo=OPTIONS["stereo"][stereo](),
        chunking=OPTIONS["chunking"][chunking](),
    )


def run_end_to_end(
    stereo: str,
    chunking: str,
    seeds: int,
    duration_s: float,
    device: str,
    batch_size: int,
    timeout_s: float,
    work_dir: Path | None,
    writers: int = 0,
) -> dict[str, Any]:
    """Run `python -m sda.run` once into a temporary folder; its wall time from launch to exit
    and where it went (its summary.json and outcome.json)."""
    with tempfile.TemporaryDirectory(prefix="sda-bench-", dir=work_dir) as tmp:
        folder = Path(tmp) / "run"
        command = [
            sys.executable,
            "-m",
            "sda.run",
            f"count={seeds}",
            f"duration_s={duration_s:g}",
            f"stereo={stereo}",
            f"chunking={chunking}",
            f"device={device}",
            *([f"batch_size={batch_size}"] if batch_size else []),
            *([f"writers={writers}"] if writers else []),
            f"hydra.run.dir={folder}",
        ]
        launched = time.time()
        start = time.perf_counter()
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise SystemExit(f"sda bench: `{' '.join(command[1:])}` ended with status {proc.returncode}:\n{tail}")
        summary = json.loads((folder / SUMMARY_FILE).read_text())
        outcome = json.loads((folder / OUTCOME_FILE).read_text())
    timings = summary["timings_s"]
    job = outcome["timings_s"]
    startup = timings["main_started_unix"] - launched
    audio_s = seeds * duration_s
    work = outcome["elapsed_s"] - job["load_s"] - job["scan_s"]  # rendering and writing, to the last write
    return {
        "command": " ".join(command[1:-1]),
        "stereo": stereo,
        "chunking": chunking,
        "seeds": seeds,
        "duration_s": duration_s,
        "device": device,
        "writers": writers,
        "wall_s": wall,
        "startup_s": startup,
        "audio_s_per_wall_s": audio_s / wall,
        "audio_s_per_wall_s_without_startup": audio_s / (wall - startup),
        "phases_s": {
            "start-up (interpreter, imports)": startup,
            "pre-flight": timings["preflight_s"],
            "Hydra and the job's set-up": timings["hydra_s"] - outcome["elapsed_s"],
            "model load": job["load_s"],
            "checking the folder": job["scan_s"],
            "rendering and writing": work,
            "summary": timings["summary_s"],
            "report (verification, pictures)": timings["report_s"],
        },
        "job_s": job,
        "overlap_s": max(0.0, job["render_s"] + job["write_wall_s"] - work),
        "writing_alone_s": max(0.0, work - job["render_s"]),
    }


def print_end_to_end(run: dict[str, Any], pipeline_rate: float | None) -> None:
    phases = run["phases_s"]
    job = run["job_s"]
    accounted = sum(phases.values())
    print(f"end to end: python {run['command']}  ({run['seeds'] * run['duration_s']:g} audio s)")
    for name, seconds in phases.items():
        print(f"  {name:34s} {seconds:8.2f} s")
        if name == "rendering and writing":
            stages = ", ".join(f"{k.removesuffix('_s')} {job[k]:.2f}" for k in ("decode_s", "phase_s", "dsp_s"))
            print(f"    {'rendering (device)':32s} {job['render_s']:8.2f} s   {stages}")
            threads = job["write_workers"]
            where = f"on {threads:g} thread(s)" if threads else "in the render's thread, between batches"
            print(
                f"    {'writing (wall, any writer busy)':32s} {job['write_wall_s']:8.2f} s   "
                f"{job['write_busy_s']:.2f} s busy {where}"
            )
            held = job["write_held_s"]
            print(f"    {'overlapped':32s} {run['overlap_s']:8.2f} s   rendering held back {held:.2f} s (queue full)")
            print(f"    {'writing, not overlapped':32s} {run['writing_alone_s']:8.2f} s")
    print(f"  {'other (lock, plan, exit)':34s} {run['wall_s'] - accounted:8.2f} s")
    print(f"  {'total, launch to exit':34s} {run['wall_s']:8.2f} s")
    rate = run["audio_s_per_wall_s_without_startup"]
    line = f"  audio s/s: {rate:.1f} end to end without start-up, {run['audio_s_per_wall_s']:.1f} with it"
    if pipeline_rate:
        line += f"; pipeline only {pipeline_rate:.1f} (end to end is {100 * rate / pipeline_rate:.0f} % of it)"
    print(line, flush=True)


def writers_text(writers: int) -> str:
    return f", writers={writers}" if writers else ""


def end_to_end_main(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    reports = []
    print(
        f"sda bench --end-to-end: {args.seeds} x {args.duration_s:g} s, {args.chunking}, device {device}, "
        f"torch {torch.__version__}, {args.repeats} run(s) of each in turns, the fastest of each shown",
        flush=True,
    )
    writer_settings = [int(w) for w in args.writers.split(",")]
    for stereo in args.stereo.split(","):
        # Taken in turns, so that a machine's changing load weighs on every figure alike.
        pipeline, runs = None, {writers: [] for writers in writer_settings}
        round_rates: list[float] = []  # each round's pipeline-only figure
        for _ in range(args.repeats):
            if args.pipeline_seeds:
                measured = measure_in_child(
                    path="default",
                    stereo=stereo,
                    chunking=args.chunking,
                    seeds=args.pipeline_seeds,
                    duration_s=args.duration_s,
                    device=device,
                    batch_size=args.batch_size,
                    threads=args.threads,
                )
                print(
                    f"  pipeline only, {stereo}: {measured['audio_s_per_wall_s']:.1f} audio s/s "
                    f"({args.pipeline_seeds} seeds, {measured['wall_s']:.1f} s)",
                    flush=True,
                )
                round_rates.append(measured["audio_s_per_wall_s"])
                if pipeline is None or measured["wall_s"] < pipeline["wall_s"]:
                    pipeline = measured
            for writers in writer_settings:
                run = run_end_to_end(
                    stereo,
                    args.chunking,
                    args.seeds,
                    args.duration_s,
                    device,
                    args.batch_size,
                    args.timeout_s,
                    args.work_dir,
                    writers,
                )
                runs[writers].append(run)
                print(
                    f"  end to end, {stereo}{writers_text(writers)}: {run['audio_s_per_wall_s_without_startup']:.1f} "
                    f"audio s/s without start-up ({run['wall_s']:.1f} s launch to exit)",
                    flush=True,
                )
        for writers in writer_settings:
            best = min(runs[writers], key=lambda run: run["wall_s"] - run["startup_s"])
            print_end_to_end(best, pipeline["audio_s_per_wall_s"] if pipeline else None)
            ratios = [
                run["audio_s_per_wall_s_without_startup"] / rate
                for run, rate in zip(runs[writers], round_rates, strict=False)
            ]
            if len(ratios) > 1:
                # The fastest of each is one figure; on a machine whose speed wanders, each
                # round's pair (taken minutes apart at most) says more about the ratio.
                print(
                    f"  round by round, end to end is {', '.join(f'{100 * r:.0f}' for r in ratios)} % of that "
                    f"round's pipeline-only figure (median {100 * statistics.median(ratios):.0f} %)",
                    flush=True,
                )
            reports.append(
                {
                    **best,
                    "all_wall_s": [run["wall_s"] for run in runs[writers]],
                    "pipeline_only": pipeline,
                    "round_ratios": ratios,
                }
            )
            if writers:
                continue  # only the run as users run it (writers chosen from the device) is recorded
            config = _config(stereo, args.chunking, args.duration_s, device)
            rate = record_rate(
                torch.device(device),
                config,
                args.seeds * args.duration_s,
                best["wall_s"] - best["startup_s"],
                "sda.bench --end-to-end",
            )
            print(f"  recorded for pre-flight's estimates: {rate.device}, {rate.kind} in {cache_path()}", flush=True)
    return reports


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
    parser.add_argument(
        "--end-to-end", action="store_true", help="time the real `python -m sda.run` process (see the module docstring)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="--end-to-end: runs of each; the fastest is shown")
    parser.add_argument(
        "--pipeline-seeds",
        type=int,
        default=None,
        help="--end-to-end: seeds of the pipeline-only figure beside it (default --seeds; 0: none)",
    )
    parser.add_argument(
        "--writers",
        default="0",
        help="--end-to-end: comma-separated writer-thread settings, each run in turn (0: chosen from the device)",
    )
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="--end-to-end: limit of each run")
    parser.add_argument("--work-dir", type=Path, default=None, help="--end-to-end: where runs write (temporary)")
    args = parser.parse_args(argv)
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.end_to_end:
        if args.pipeline_seeds is None:
            args.pipeline_seeds = args.seeds
        report = {"end_to_end": end_to_end_main(args, device), **versions()}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.output, report, replace=True)
        print(f"written to {args.output}")
        return

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
    write_json_atomic(args.output, report, replace=True)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
