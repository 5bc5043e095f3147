"""sda.novelty: the nearest training window of a clip, on synthesized audio."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from sda.data.corpus import synthesize_clip
from sda.errors import CheckpointError
from sda.novelty import (
    FINGERPRINT_DIMS,
    NEAR_COPY_DB,
    SAMPLE_RATE,
    NoveltyIndex,
    window_fingerprints,
)

pytestmark = pytest.mark.usefixtures("one_thread")

INDEXED = ("noise_sweep", "drone")
UNRELATED = ("struck", "fm")


def demo_clip(family: str, index: int) -> torch.Tensor:
    audio = synthesize_clip(family, index, seed=0, sample_rate=SAMPLE_RATE)
    return torch.from_numpy((audio.mean(axis=1) if audio.ndim == 2 else audio).astype(np.float32))


@pytest.fixture(scope="module")
def index() -> NoveltyIndex:
    """Takes 0-3 of two demo families: the 'training windows'."""
    return NoveltyIndex.build([(f"{family}_{i}.wav", demo_clip(family, i)) for family in INDEXED for i in range(4)])


@pytest.mark.parametrize(
    ("family", "take", "offset_s", "gain"),
    [("noise_sweep", 3, 0.61, 0.1), ("drone", 0, 1.37, 3.0), ("drone", 2, 2.903, 0.5)],
)
def test_a_training_segment_played_back_shifted_and_at_another_level_is_a_near_copy_found_where_it_came_from(
    index: NoveltyIndex, family: str, take: int, offset_s: float, gain: float
):
    source = demo_clip(family, take)
    first = round(offset_s * SAMPLE_RATE)  # off the index's 0.25 s grid
    nearest = index.nearest(gain * source[first : first + 2 * SAMPLE_RATE])
    assert nearest is not None
    assert nearest.file == f"{family}_{take}.wav"
    assert nearest.distance_db <= NEAR_COPY_DB and nearest.near_copy
    # the matched training window starts where the matched part of the clip came from
    assert abs(nearest.start_s - (offset_s + nearest.clip_start_s)) <= 0.011


def test_held_out_takes_of_an_indexed_family_sit_between_copies_and_unrelated_sounds(index: NoveltyIndex):
    copy = index.nearest(0.3 * demo_clip("drone", 0)[SAMPLE_RATE // 3 :])
    takes = [index.nearest(demo_clip(family, i)) for family in INDEXED for i in range(4, 8)]
    unrelated = [index.nearest(demo_clip(family, i)) for family in UNRELATED for i in range(4)]
    assert copy is not None and all(n is not None for n in takes + unrelated)
    take_db = [n.distance_db for n in takes]
    unrelated_db = [n.distance_db for n in unrelated]
    assert not any(n.near_copy for n in takes + unrelated)
    assert copy.distance_db < min(take_db)
    assert statistics.median(take_db) < statistics.median(unrelated_db)


def test_fingerprints_ignore_level_and_a_silent_clip_has_no_nearest_window(index: NoveltyIndex):
    windows = demo_clip("fm", 1)[None, :SAMPLE_RATE]
    loud, quiet = window_fingerprints(windows), window_fingerprints(windows * 1e-3)
    assert loud.shape == (1, FINGERPRINT_DIMS)
    assert torch.allclose(loud, quiet, atol=1e-3)
    assert index.nearest(torch.zeros(3 * SAMPLE_RATE)) is None


def test_a_copy_deep_inside_a_long_clip_is_found(index: NoveltyIndex):
    # more query windows than one comparison block: the copy lies in the second block
    filler = 0.05 * demo_clip("struck", 0)
    filler = torch.cat([filler, filler, filler])[: round(11.5 * SAMPLE_RATE)]
    copied = demo_clip("noise_sweep", 1)[: 3 * SAMPLE_RATE]
    nearest = index.nearest(torch.stack([torch.cat([filler, copied])] * 2))  # [channels, samples]
    assert nearest is not None and nearest.file == "noise_sweep_1.wav" and nearest.near_copy
    assert nearest.clip_start_s >= 11.5 - 0.01


def test_the_index_round_trips_through_a_weights_only_checkpoint_and_stays_compact(index: NoveltyIndex, tmp_path: Path):
    path = tmp_path / "index.pt"
    torch.save({"novelty": index.to_state()}, path)
    loaded = NoveltyIndex.from_state(torch.load(path, weights_only=True)["novelty"])
    assert loaded.files == index.files and len(loaded) == len(index)
    assert torch.equal(loaded.fingerprints, index.fingerprints)
    clip = demo_clip("drone", 5)
    assert loaded.nearest(clip) == index.nearest(clip)
    # 256 bytes of fingerprint + 8 of file and time per window: 3000 windows in 0.8 MB
    assert index.nbytes / len(index) <= 264
    assert path.stat().st_size <= 264 * len(index) + 4096


def test_an_index_made_with_other_fingerprint_settings_is_refused(index: NoveltyIndex):
    state = index.to_state()
    state["settings"] = {**state["settings"], "n_bands": 32}
    with pytest.raises(CheckpointError, match="fingerprint settings"):
        NoveltyIndex.from_state(state)
    truncated = {**index.to_state(), "file_ids": index.file_ids[:-1]}
    with pytest.raises(CheckpointError, match="shapes"):
        NoveltyIndex.from_state(truncated)
