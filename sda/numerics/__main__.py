"""`python -m sda.numerics`: this machine's numerics and the sha256 of a reference render.

    python -m sda.numerics                 # status, then one sha256 per chunking mode
    python -m sda.numerics --json          # the same as one JSON object
    python -m sda.numerics --device cuda   # the reference render on a GPU

Two machines with the same library versions whose CPU numerics are pinned print the same sha256s;
compare them by eye. The reference render: the shipped default model, seed 0, 2 s, dual_seed
(two voices, so one item is already a batch of two), 48 kHz, one torch thread unless `--threads`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch

from sda.config import OPTIONS, DualSeedStereo, GenerationConfig
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda.numerics", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the render (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.threads < 1:
        print(f"error: --threads={args.threads} is not allowed: an integer >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
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
