"""`python -m sda.numerics`: this machine's numerics and the sha256 of a reference render.

    python -m sda.numerics                 # status, then one sha256 per chunking mode
    python -m sda.numerics --json          # the same as one JSON object
    python -m sda.numerics --device cuda   # the reference render on a GPU
    python -m sda.numerics --rounding-sensitivity 24   # what one rounding step does to a render

Two machines with the same library versions whose CPU numerics are pinned print the same sha256s;
compare them by eye. The reference render: the shipped default model, seed 0, 2 s, dual_seed
(two voices, so one item is already a batch of two), 48 kHz, one torch thread unless `--threads`.

`--rounding-sensitivity N` measures the ground of the bounds of sda.numerics (GPU_VS_CPU,
GPU_BATCH): seeds 0 .. N-1 of each chunking mode (2 s, mono, 44.1 kHz) are rendered, then
rendered again with every value of their magnitude spectrograms changed by a relative 1e-7
(about one float32 rounding step, what another device's or batch's arithmetic changes), and it
prints the peak difference and log-spectral distance of each pair (sda.dsp.difference), the
median and the worst. Phase reconstruction turns such a change into another waveform of the
same sound.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from unittest import mock

import torch

import sda.pipeline
from sda.config import OPTIONS, DualSeedStereo, GenerationConfig, MonoStereo, WavExport
from sda.dsp.difference import log_spectral_distance_db, peak_difference_dbfs
from sda.model import load_model
from sda.numerics import numerics_status
from sda.pipeline import GenerationPipeline

REFERENCE_SEED = 0
REFERENCE_DURATION_S = 2.0


def reference_sha256(device: str) -> dict[str, str]:
    """sha256 of the float32 audio of the reference render, per chunking mode."""
    model = load_model("default", device)
    hashes = {}
    for mode, chunking in OPTIONS["chunking"].items():
        config = GenerationConfig(
            duration_s=REFERENCE_DURATION_S, device=device, chunking=chunking(), stereo=DualSeedStereo()
        )
        [result] = GenerationPipeline(model, config).generate([REFERENCE_SEED])
        hashes[mode] = hashlib.sha256(result.audio.astype("<f4").tobytes()).hexdigest()
    return hashes


ROUNDING_STEP = 1e-7  # relative change of every magnitude value: about one float32 rounding step


def rounding_sensitivity(seeds: int, device: str) -> dict[str, list[tuple[float, float]]]:
    """Per chunking mode (one-shots aside: a hit is 1 s at most), each seed's (peak difference
    dBFS, log-spectral distance dB) between its render and the render whose magnitude
    spectrograms were changed by ROUNDING_STEP (a fixed pattern of signs and sizes)."""
    model = load_model("default", device)
    exact = sda.pipeline.inverse_mel

    def nudged(*args, **kwargs):
        magnitude = exact(*args, **kwargs)
        noise = torch.randn(magnitude.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
        return magnitude * (1 + ROUNDING_STEP * noise).to(magnitude.device, magnitude.dtype)

    figures = {}
    for mode in ("crossfade", "latent_interp"):
        config = GenerationConfig(
            duration_s=2.0,
            device=device,
            chunking=OPTIONS["chunking"][mode](),
            stereo=MonoStereo(),
            export=WavExport(sample_rate=44100),
        )
        pipeline = GenerationPipeline(model, config)
        renders = pipeline.generate(list(range(seeds)))
        with mock.patch.object(sda.pipeline, "inverse_mel", nudged):
            again = pipeline.generate(list(range(seeds)))
        figures[mode] = [
            (
                peak_difference_dbfs(torch.from_numpy(a.audio), torch.from_numpy(b.audio)),
                log_spectral_distance_db(torch.from_numpy(a.audio), torch.from_numpy(b.audio)),
            )
            for a, b in zip(renders, again, strict=True)
        ]
    return figures


def print_sensitivity(figures: dict[str, list[tuple[float, float]]]) -> None:
    print(f"one rounding step ({ROUNDING_STEP:g} relative) in the magnitude spectrograms, 2 s mono at 44.1 kHz:")
    for mode, pairs in figures.items():
        peaks, distances = [p for p, _ in pairs], [d for _, d in pairs]
        worst = max(range(len(pairs)), key=lambda i: (peaks[i], distances[i]))
        print(
            f"  {mode:14s} {len(pairs)} seeds | peak difference median {statistics.median(peaks):.1f} dBFS, "
            f"worst {max(peaks):.1f} (seed {worst}) | log-spectral distance median "
            f"{statistics.median(distances):.3f} dB, worst {max(distances):.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda.numerics", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the render (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--rounding-sensitivity", type=int, default=0, metavar="N", help="measure it over seeds 0 .. N-1 instead"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        print(f"error: --threads={args.threads} is not allowed: an integer >= 1", file=sys.stderr)
        return 2
    if args.rounding_sensitivity < 0:
        message = f"--rounding-sensitivity={args.rounding_sensitivity} is not allowed: an integer >= 0 (0: off)"
        print(f"error: {message}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.rounding_sensitivity:
        print_sensitivity(rounding_sensitivity(args.rounding_sensitivity, args.device))
        return 0
    status = numerics_status(args.device)
    hashes = reference_sha256(args.device)
    if args.json:
        print(json.dumps({**status, "reference_sha256": hashes}))
        return 0
    for key, value in status.items():
        print(f"{key:22s}{'; '.join(value) or '-' if isinstance(value, list) else value}")
    print(
        f"reference render: default model, seed {REFERENCE_SEED}, {REFERENCE_DURATION_S:g} s, dual_seed, "
        f"48 kHz, {args.threads} thread(s), {args.device}"
    )
    for mode, digest in hashes.items():
        print(f"  {mode:20s}sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
