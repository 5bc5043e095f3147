"""What a checkpoint keeps of its training windows (the `training_summary` section of checkpoint
format 2), each window with the file and the time it came from:

- `latents`: each training window's posterior mean (`source=corpus` draws from them);
- `novelty`: the sda.novelty index of the training files, the reference sda.evaluate measures
  copies against (the memorization check compares every output with it);
- `renditions`: the sda.novelty fingerprint of each training window as the model itself renders
  it (its posterior mean decoded, phase-reconstructed with the default settings). A model that
  replays a training window makes a blurred copy, a few dB from the recording (median 2.5 dB on
  the shipped model) but within a hundredth of a dB of this rendition: the memorization check
  compares with both.

Made at the end of training, from the training files only: the validation files are audio the
model never saw, and a copy of them is no memorization. The windows are the training run's own
(`sda.data.windows.window_starts`: the non-silent grid windows, `hop_samples` apart, no
augmentation). Latents are stored as float16 (128 bytes a window at 64 dimensions), fingerprints
as float16 (256 bytes a window; the novelty index holds one every 0.25 s): the demo corpus adds
about 0.2 MB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sda.data.windows import window_starts
from sda.dsp.phase import griffin_lim, inverse_mel
from sda.dsp.resample import resample
from sda.dsp.spectrogram import SpectrogramSettings, decompress, log_mel
from sda.errors import CheckpointError
from sda.novelty import SAMPLE_RATE as NOVELTY_SAMPLE_RATE
from sda.novelty import NoveltyIndex, settings_dict, window_fingerprints

ENCODE_BATCH = 64
# Windows rendered per Griffin-Lim call: about the pipeline's cache-sized group on a CPU.
RENDER_BATCH = 20


@dataclass(frozen=True)
class TrainingSummary:
    """Training windows: `latents` float16 `[N, latent_dim]` (posterior means), `file_ids` int32
    `[N]` into `files`, `starts_s` float32 `[N]`. `novelty` indexes the training files and
    `renditions` the model's rendition of each latent row (same rows, files and starts); both are
    None when unusable here, `novelty_unavailable` saying why (other fingerprint settings)."""

    latents: torch.Tensor
    file_ids: torch.Tensor
    starts_s: torch.Tensor
    files: tuple[str, ...]
    novelty: NoveltyIndex | None
    renditions: NoveltyIndex | None
    novelty_unavailable: str = ""

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    @classmethod
    def build(
        cls,
        encode: Callable[[torch.Tensor], torch.Tensor],
        render: Callable[[torch.Tensor], torch.Tensor],
        clips: Sequence[tuple[str, np.ndarray]],
        settings: SpectrogramSettings,
        hop_samples: int,
        silence_dbfs: float,
        device: torch.device,
    ) -> TrainingSummary:
        """Summarize `(name, mono audio at settings.sample_rate)` clips: `encode` turns log-mels
        `[B, n_mels, frames]` into posterior means `[B, D]`, `render` posterior means into audio
        `[B, window_samples]` (see `render_latents`)."""
        window = settings.window_samples
        latents, file_ids, starts, files = [], [], [], []
        with torch.no_grad():
            for name, audio in clips:
                clip_starts = window_starts(audio, window, hop_samples, silence_dbfs, settings.sample_rate)
                if clip_starts.size == 0:
                    continue
                padded = np.zeros(max(audio.shape[0], window), dtype=np.float32)
                padded[: audio.shape[0]] = audio
                windows = torch.from_numpy(np.stack([padded[s : s + window] for s in clip_starts.tolist()]))
                for first in range(0, windows.shape[0], ENCODE_BATCH):
                    batch = windows[first : first + ENCODE_BATCH].to(device)
                    latents.append(encode(log_mel(batch, settings)).float().cpu().half())
                file_ids.append(torch.full((clip_starts.size,), len(files), dtype=torch.int32))
                starts.append(torch.from_numpy(clip_starts).float() / settings.sample_rate)
                files.append(str(name))
            if not latents:
                raise ValueError("no training window above the silence threshold: nothing to summarize")
            all_latents, all_ids, all_starts = torch.cat(latents), torch.cat(file_ids), torch.cat(starts)
            rendered = torch.cat(
                [
                    window_fingerprints(_at_novelty_rate(render(all_latents[i : i + RENDER_BATCH].float()), settings))
                    for i in range(0, all_latents.shape[0], RENDER_BATCH)
                ]
            )
        renditions = NoveltyIndex(
            rendered.half(), all_ids, all_starts, tuple(files), hop_samples / settings.sample_rate
        )
        novelty = NoveltyIndex.build(
            ((name, _at_novelty_rate(torch.from_numpy(audio), settings)) for name, audio in clips),
            silence_dbfs=silence_dbfs,
        )
        return cls(all_latents, all_ids, all_starts, tuple(files), novelty, renditions)

    def to_state(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers (loadable with `torch.load(weights_only=True)`)."""
        return {
            "latents": self.latents.clone(),
            "file_ids": self.file_ids.clone(),
            "starts_s": self.starts_s.clone(),
            "files": list(self.files),
            "novelty": self.novelty.to_state() if self.novelty is not None else None,
            "renditions": self.renditions.to_state() if self.renditions is not None else None,
        }

    @classmethod
    def from_state(cls, state: Any, latent_dim: int) -> TrainingSummary:
        """The summary `to_state()` gave; CheckpointError (one line) when it is malformed. Indexes
        made with other fingerprint settings leave the memorization check unavailable, not the
        model unusable."""
        if not isinstance(state, dict):
            raise CheckpointError(f"training_summary is a {type(state).__name__}, not a mapping")
        latents, file_ids, starts = state.get("latents"), state.get("file_ids"), state.get("starts_s")
        files = state.get("files")
        if not all(isinstance(t, torch.Tensor) for t in (latents, file_ids, starts)) or not isinstance(files, list):
            raise CheckpointError("training_summary lacks latents, file_ids, starts_s or files")
        rows = latents.shape[0]
        if latents.shape != (rows, latent_dim) or file_ids.shape != (rows,) or starts.shape != (rows,) or rows == 0:
            raise CheckpointError(
                f"training_summary shapes {tuple(latents.shape)}, {tuple(file_ids.shape)}, {tuple(starts.shape)} "
                f"do not match [N >= 1, {latent_dim}], [N], [N]"
            )
        if not 0 <= int(file_ids.min()) <= int(file_ids.max()) < len(files):
            raise CheckpointError(f"training_summary file_ids outside the {len(files)} files it names")
        if not bool(torch.isfinite(latents.float()).all()):
            raise CheckpointError("training_summary latents hold NaN or infinite values")
        novelty_state, renditions_state = state.get("novelty"), state.get("renditions")
        if not isinstance(novelty_state, dict) or not isinstance(renditions_state, dict):
            raise CheckpointError("training_summary lacks its novelty index or its renditions")
        novelty = renditions = None
        unavailable = ""
        if novelty_state.get("settings") != settings_dict() or renditions_state.get("settings") != settings_dict():
            unavailable = "its training windows were fingerprinted with other settings (another sda.novelty version)"
        else:
            novelty, renditions = NoveltyIndex.from_state(novelty_state), NoveltyIndex.from_state(renditions_state)
            if len(renditions) != rows:
                raise CheckpointError(f"training_summary holds {len(renditions)} renditions for {rows} latents")
        return cls(
            latents.to(torch.float16),
            file_ids.to(torch.int32),
            starts.float(),
            tuple(str(f) for f in files),
            novelty,
            renditions,
            unavailable,
        )


def render_latents(
    decode: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    settings: SpectrogramSettings,
    inverse_mel_method: str,
    iterations: int,
    momentum: float,
    init: str,
) -> torch.Tensor:
    """Audio `[B, window_samples]` of latents `[B, D]` as the pipeline renders one window:
    `decode` to log-mels, inverse mel, Griffin-Lim (`init` "random" is not supported here)."""
    magnitude = inverse_mel(decompress(decode(latents)), settings, inverse_mel_method)
    return griffin_lim(magnitude, settings, settings.window_samples, iterations, momentum, init)


def _at_novelty_rate(audio: torch.Tensor, settings: SpectrogramSettings) -> torch.Tensor:
    return resample(audio.float().cpu(), settings.sample_rate, NOVELTY_SAMPLE_RATE)
