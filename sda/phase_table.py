"""`python -m sda.phase_table`: round-trip quality against time of phase-reconstruction settings.

One 1 s window from the middle of every demo-corpus clip goes audio -> log-mel -> (inverse mel,
Griffin-Lim) -> audio, all windows as one batch. For each setting the table gives the spectral
convergence on a linear STFT (|| |STFT(y)| - |STFT(x)| || / || |STFT(x)| ||), the log-mel L1
distance, and wall seconds per audio second (the fastest of --repeats runs). The reference is torchaudio's own path: a
least-squares InverseMelScale and 128 iterations of its GriffinLim (momentum 0.99, random start).

The default (sda.config.PhaseConfig) is the fastest setting whose spectral convergence is within
2 % of the reference's; the command prints which setting that is.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sda.data.corpus import ensure_demo_corpus
from sda.data.folder import load_audio_folder
from sda.dsp.phase import griffin_lim, inverse_mel, reference_reconstruct, spectral_convergence
from sda.dsp.spectrogram import SpectrogramSettings, decompress, log_mel, stft
from sda.files import write_json_atomic
from sda.versions import versions

QUALITY_MARGIN = 1.02


@dataclass
class Row:
    name: str
    inverse_mel: str
    init: str
    iterations: int
    momentum: float
    spectral_convergence: float = 0.0
    log_mel_l1: float = 0.0
    seconds_per_audio_second: float = 0.0


def corpus_windows(folder: Path, settings: SpectrogramSettings) -> torch.Tensor:
    """`[clips, window_samples]`: the middle second of every demo clip."""
    ensure_demo_corpus(folder)
    dataset = load_audio_folder(folder, settings.sample_rate)
    n = settings.window_samples
    windows = []
    for clip in dataset.clips:
        audio = torch.from_numpy(clip.audio)
        if audio.shape[0] >= n:
            start = (audio.shape[0] - n) // 2
            windows.append(audio[start : start + n])
    return torch.stack(windows)


def reconstruct(
    row: Row, target_log_mel: torch.Tensor, settings: SpectrogramSettings, length: int, seed: int
) -> torch.Tensor:
    if row.name == "reference":
        return reference_reconstruct(target_log_mel, settings, length, seed)
    magnitude = inverse_mel(decompress(target_log_mel), settings, row.inverse_mel)
    generators = (
        [torch.Generator().manual_seed(seed + i) for i in range(target_log_mel.shape[0])]
        if row.init == "random"
        else None
    )
    return griffin_lim(magnitude, settings, length, row.iterations, row.momentum, row.init, generators)


def measure(row: Row, audio: torch.Tensor, settings: SpectrogramSettings, seed: int, repeats: int = 3) -> Row:
    """Quality of one reconstruction; time as the fastest of `repeats` identical runs, so a
    moment of competing load on the machine does not decide the ranking."""
    target_log_mel = log_mel(audio, settings)
    target_magnitude = stft(audio, settings).abs()
    length = audio.shape[-1]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rebuilt = reconstruct(row, target_log_mel, settings, length, seed)
        times.append(time.perf_counter() - start)
    row.spectral_convergence = float(spectral_convergence(rebuilt, target_magnitude, settings).mean())
    row.log_mel_l1 = float((log_mel(rebuilt, settings) - target_log_mel).abs().mean())
    row.seconds_per_audio_second = min(times) / (audio.shape[0] * length / settings.sample_rate)
    return row


def candidate_rows() -> list[Row]:
    rows = [Row("reference", "lstsq", "random", 128, 0.99)]
    rows += [Row("sda", "lstsq", "random", n, 0.99) for n in (32, 128)]
    rows += [Row("sda", "pinv", "random", n, 0.99) for n in (16, 32, 64, 128)]
    rows += [Row("sda", "pinv", "random", 32, m) for m in (0.0, 0.9)]
    rows += [Row("sda", "pinv", "pghi", n, 0.99) for n in (8, 16, 32)]
    rows += [Row("sda", "pinv", "locked", n, 0.99) for n in (0, 4, 8, 12, 16, 24, 32, 64)]
    rows += [Row("sda", "pinv", "locked", 16, m) for m in (0.0, 0.9)]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", type=Path, default=Path("data/demo_corpus"), help="demo corpus folder (made if missing)"
    )
    parser.add_argument("--output", type=Path, default=Path("bench/phase_table.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the fastest counts (default 3)")
    args = parser.parse_args(argv)

    settings = SpectrogramSettings()
    torch.set_grad_enabled(False)
    audio = corpus_windows(args.corpus, settings)
    rows = []
    print(
        f"{audio.shape[0]} windows of 1 s from {args.corpus}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    header = f"{'setting':34s} {'spectral conv.':>15s} {'log-mel L1':>11s} {'s per audio s':>14s}"
    print(header)
    for row in candidate_rows():
        measure(row, audio, settings, args.seed, args.repeats)
        rows.append(row)
        label = (
            "reference (torchaudio lstsq + GL 128)"
            if row.name == "reference"
            else (f"{row.inverse_mel} {row.init} {row.iterations} it m={row.momentum:g}")
        )
        print(
            f"{label:34s} {row.spectral_convergence:15.4f} {row.log_mel_l1:11.4f} {row.seconds_per_audio_second:14.4f}",
            flush=True,
        )
    reference = rows[0]
    bound = reference.spectral_convergence * QUALITY_MARGIN
    eligible = [r for r in rows[1:] if r.spectral_convergence <= bound]
    best = min(eligible, key=lambda r: r.seconds_per_audio_second) if eligible else None
    if best:
        print(
            f"fastest within {100 * (QUALITY_MARGIN - 1):.0f} % of the reference's spectral convergence ({bound:.4f}): "
            f"{best.inverse_mel} {best.init} {best.iterations} it m={best.momentum:g}, "
            f"{reference.seconds_per_audio_second / best.seconds_per_audio_second:.1f}x faster than the reference"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        args.output,
        {
            "windows": int(audio.shape[0]),
            "rows": [r.__dict__ for r in rows],
            "choice": best.__dict__ if best else None,
            "threads": torch.get_num_threads(),
            **versions(),
        },
        replace=True,
    )
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
