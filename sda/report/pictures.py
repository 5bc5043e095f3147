"""Each output's picture in the report: a one-shot's waveform (a hit is seen by its shape),
anything else's spectrogram. Where it lives (beside its job's outputs, named by the output's
stem and identity) and how it is drawn: by sda.runner as each output is written, by sda.report
for the outputs that have none yet."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sda.files import write_atomic
from sda.outputs import SPECTROGRAM_DIR
from sda.report.spectrogram import levels_image, png_bytes, write_spectrogram
from sda.report.waveform import write_waveform


def picture_path(audio_path: Path, identity: str, one_shot: bool) -> Path:
    """Where the picture of the output `audio_path` with `identity` lives."""
    key = re.sub(r"[^0-9A-Za-z]", "", identity)[:32] or "noidentity"
    suffix = "_waveform" if one_shot else ""
    return audio_path.parent / SPECTROGRAM_DIR / f"{audio_path.stem}_{key}{suffix}.png"


def write_picture(audio_path: Path, identity: str, one_shot: bool, levels_db: np.ndarray | None = None) -> Path:
    """Draw the output's picture where the report looks for it: a spectrogram from `levels_db`
    (`[height, width]`, computed with the audio where it was made) when given, else from the file."""
    png = picture_path(audio_path, identity, one_shot)
    if one_shot:
        write_waveform(audio_path, png)
    elif levels_db is None:
        write_spectrogram(audio_path, png)
    else:
        png.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(png, png_bytes(levels_image(levels_db)), replace=True)
    return png
