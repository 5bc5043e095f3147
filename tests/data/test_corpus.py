import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sda.data.corpus import DEMO_CORPUS_VERSION, FAMILIES, MANIFEST_NAME, ensure_demo_corpus, synthesize_demo_corpus
from sda.data.folder import load_audio_folder
from sda.errors import DatasetError


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("demo")
    return folder, synthesize_demo_corpus(folder, seed=0)


@pytest.fixture
def corpus_copy(corpus, tmp_path) -> Path:
    folder = tmp_path / "demo"
    shutil.copytree(corpus[0], folder)
    return folder


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(path)
    return (audio.mean(axis=1) if audio.ndim == 2 else audio), rate


def test_corpus_has_six_families_of_eight_named_clips(corpus):
    folder, paths = corpus
    assert len(paths) == 48 and 30 <= len(paths) <= 60
    assert [p.name for p in paths] == [f"{family}_{i:02d}.wav" for family in FAMILIES for i in range(8)]
    assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in paths] + [MANIFEST_NAME])


def test_every_clip_is_24_bit_48k_2_to_6_seconds_finite_and_peaks_between_minus_12_and_minus_1_dbfs(corpus):
    _, paths = corpus
    channel_counts = []
    for path in paths:
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate) == ("WAV", "PCM_24", 48000), path.name
        assert 2.0 <= info.duration <= 6.0, path.name
        audio, _ = sf.read(path, always_2d=True)
        assert np.isfinite(audio).all(), path.name
        peak_dbfs = 20 * np.log10(np.abs(audio).max())
        assert -12.5 <= peak_dbfs <= -0.9, (path.name, peak_dbfs)
        # faded: the first and last samples are near silence
        assert np.abs(audio[0]).max() < 1e-3 and np.abs(audio[-1]).max() < 1e-3, path.name
        channel_counts.append(info.channels)
    assert channel_counts.count(2) == 6 and channel_counts.count(1) == 42  # mostly mono, one stereo per family


def test_manifest_records_seed_version_and_every_file_hash(corpus):
    folder, paths = corpus
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["seed"] == 0 and manifest["version"] == DEMO_CORPUS_VERSION
    assert manifest["files"] == {p.name: sha256(p) for p in paths}


def test_synthesis_is_bit_identical_for_a_seed(corpus, tmp_path):
    folder, paths = corpus
    again = synthesize_demo_corpus(tmp_path, seed=0)
    assert [sha256(p) for p in again] == [sha256(p) for p in paths]
    assert (tmp_path / MANIFEST_NAME).read_bytes() == (folder / MANIFEST_NAME).read_bytes()


def test_a_clip_does_not_depend_on_how_many_clips_are_made(corpus, tmp_path):
    _, paths = corpus
    fewer = synthesize_demo_corpus(tmp_path, seed=0, clips_per_family=2)
    by_name = {p.name: p for p in paths}
    assert all(sha256(p) == sha256(by_name[p.name]) for p in fewer)


def features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """[log spectral centroid, log spectral flatness, level jumpiness (dB), spectral flux,
    median level relative to peak (dB)] over 2048-sample frames within 40 dB of the loudest."""
    frames = audio[: audio.size // 2048 * 2048].reshape(-1, 2048) * np.hanning(2048)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    centroid = (power * np.fft.rfftfreq(2048, 1 / sample_rate)).sum(1) / power.sum(1)
    flatness = np.exp(np.log(power).mean(1)) / power.mean(1)
    level_db = 10 * np.log10(power.sum(1))
    loud = level_db > level_db.max() - 40
    flux = np.sqrt((np.diff(np.log(power), axis=0) ** 2).mean(1))
    return np.array(
        [
            np.log(np.median(centroid[loud])),
            np.log(np.median(flatness[loud])),
            np.std(np.diff(level_db)),
            np.median(flux),
            np.median(level_db) - level_db.max(),
        ]
    )


def test_families_differ_measurably_in_spectrum_and_envelope(corpus):
    _, paths = corpus
    table = np.array([features(*read_mono(p)) for p in paths])
    labels = np.array([p.name.rsplit("_", 1)[0] for p in paths])

    # every pair of families is more than two pooled standard deviations apart on some feature
    for a, b in itertools.combinations(FAMILIES, 2):
        fa, fb = table[labels == a], table[labels == b]
        separation = np.abs(fa.mean(0) - fb.mean(0)) / np.sqrt((fa.var(0) + fb.var(0)) / 2)
        assert separation.max() > 2.0, (a, b, separation)
    # and a clip's nearest family centre (leaving the clip out) is mostly its own (chance: 1 in 6)
    z = (table - table.mean(0)) / table.std(0)
    hits = 0
    for i in range(len(z)):
        others = np.arange(len(z)) != i
        centres = {f: z[others & (labels == f)].mean(0) for f in FAMILIES}
        hits += min(centres, key=lambda f: np.linalg.norm(z[i] - centres[f])) == labels[i]
    assert hits / len(z) >= 0.7


def test_families_vary_within_themselves(corpus):
    _, paths = corpus
    for family in FAMILIES:
        centroids = [features(*read_mono(p))[0] for p in paths if p.name.startswith(family + "_")]
        durations = [sf.info(p).duration for p in paths if p.name.startswith(family + "_")]
        assert np.ptp(centroids) > 0.3, family  # spectral centroids more than 35 % apart
        assert np.ptp(durations) > 1.0, family


def test_the_loader_reads_the_corpus_without_skipping_anything(corpus):
    folder, paths = corpus
    dataset = load_audio_folder(folder)
    assert [c.path.name for c in dataset.clips] == sorted(p.name for p in paths)
    assert dataset.skipped == []
    assert sum(c.source_channels == 2 for c in dataset.clips) == 6
    assert dataset.fingerprint.total_seconds == pytest.approx(sum(sf.info(p).duration for p in paths))


def test_ensure_leaves_a_valid_corpus_untouched(corpus_copy):
    before = mtimes(corpus_copy)
    paths = ensure_demo_corpus(corpus_copy, seed=0)
    assert [p.name for p in paths] == [f"{family}_{i:02d}.wav" for family in FAMILIES for i in range(8)]
    assert mtimes(corpus_copy) == before


def test_ensure_repairs_a_deleted_and_a_corrupted_clip_and_rewrites_only_those(corpus_copy):
    manifest = json.loads((corpus_copy / MANIFEST_NAME).read_text())["files"]
    (corpus_copy / "drone_03.wav").unlink()
    damaged = bytearray((corpus_copy / "fm_02.wav").read_bytes())
    damaged[5000:5100] = bytes(100)
    (corpus_copy / "fm_02.wav").write_bytes(bytes(damaged))
    before = mtimes(corpus_copy)

    ensure_demo_corpus(corpus_copy, seed=0)

    assert {name: sha256(corpus_copy / name) for name in manifest} == manifest
    after = mtimes(corpus_copy)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {"drone_03.wav", "fm_02.wav", MANIFEST_NAME}


def test_ensure_resynthesizes_for_another_seed(corpus_copy):
    old = {p.name: sha256(p) for p in corpus_copy.glob("*.wav")}
    ensure_demo_corpus(corpus_copy, seed=1)
    manifest = json.loads((corpus_copy / MANIFEST_NAME).read_text())
    assert manifest["seed"] == 1
    assert all(manifest["files"][name] != digest for name, digest in old.items())


def test_an_interrupted_synthesis_leaves_no_manifest_and_no_partial_file(corpus_copy):
    # a folder where a clip should go makes the write fail part-way through the corpus
    (corpus_copy / "fm_00.wav").unlink()
    (corpus_copy / "fm_00.wav").mkdir()

    with pytest.raises(DatasetError) as excinfo:
        ensure_demo_corpus(corpus_copy, seed=0)

    assert "\n" not in str(excinfo.value) and str(excinfo.value).startswith("dataset.path=")

    assert not (corpus_copy / MANIFEST_NAME).exists()
    assert [p.name for p in corpus_copy.iterdir() if p.name.startswith(".")] == []
    (corpus_copy / "fm_00.wav").rmdir()
    ensure_demo_corpus(corpus_copy, seed=0)
    assert (corpus_copy / MANIFEST_NAME).exists() and sf.info(corpus_copy / "fm_00.wav").samplerate == 48000


def test_clips_an_earlier_corpus_listed_are_removed_but_other_files_kept(tmp_path):
    synthesize_demo_corpus(tmp_path, seed=0, clips_per_family=2)
    (tmp_path / "mine.wav").write_bytes(b"a user's file")

    paths = synthesize_demo_corpus(tmp_path, seed=0, clips_per_family=1)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in paths] + [MANIFEST_NAME, "mine.wav"])
