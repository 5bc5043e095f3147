"""GPU renders: every chunking and stereo mode at the exact length and level and near the CPU's
render; an item alone against the same item in a batch of eight; out-of-memory halving with a
real allocation; resume and reproduce through `python -m sda.run device=cuda`.

A GPU's kernels pick their algorithms by problem size, so on a GPU an item's audio depends on its
batch by a bounded amount, and a GPU's audio differs from the CPU's by a larger bounded amount
(Griffin-Lim turns rounding differences into phase differences). The bounds below are those the
README's determinism contract states. Every test prints what it measured (`pytest -m gpu -s`):
peak difference in dBFS and log-spectral distance in dB (sda.dsp.difference).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from sda.config import (
    OPTIONS,
    CorpusSource,
    FileSource,
    GenerationConfig,
    MorphSource,
    Normalize,
    OneshotChunking,
    WavExport,
)
from sda.dsp import chain_kernel, phase
from sda.dsp.difference import log_spectral_distance_db, peak_difference_dbfs
from sda.dsp.picture import spectrogram_levels_batch
from sda.dsp.quality import measure_quality_batch
from sda.dsp.spectrogram import SpectrogramSettings
from sda.model import load_model
from sda.numerics import GPU_BATCH, GPU_VS_CPU
from sda.outputs import verify_output
from sda.pipeline import GenerationPipeline
from sda.report.spectrogram import SPECTROGRAM_FLOOR_DB, SPECTROGRAM_PICTURE, spectrogram_levels_db
from tests.helpers import CEILING, ONE_THREAD, run_sda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("one_thread"),  # CPU renders on one torch thread
]

# The determinism contract's bounds (sda.numerics): GPU against CPU, and on a GPU alone against
# in a batch. These tests print what they measure, so a GPU run gives the figures.
GPU_VS_CPU_PEAK_DBFS, GPU_VS_CPU_LSD_DB = GPU_VS_CPU.peak_dbfs, GPU_VS_CPU.lsd_db
GPU_BATCH_PEAK_DBFS, GPU_BATCH_LSD_DB = GPU_BATCH.peak_dbfs, GPU_BATCH.lsd_db

FLOOR = 10 ** (-1.0001 / 20)


@pytest.fixture(scope="module")
def models():
    return {device: load_model("default", device) for device in ("cpu", "cuda")}


def config(chunking: str = "crossfade", stereo: str = "mono", **options) -> GenerationConfig:
    options.setdefault("duration_s", 2.0)
    sample_rate = options.pop("sample_rate", 48000)
    return GenerationConfig(
        device="cuda",
        chunking=OPTIONS["chunking"][chunking](),
        stereo=OPTIONS["stereo"][stereo](),
        export=WavExport(sample_rate=sample_rate),
        **options,
    )


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(peak difference in dBFS, log-spectral distance in dB) of two renders."""
    a, b = torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b))
    return peak_difference_dbfs(a, b), log_spectral_distance_db(a, b)


def report(what: str, peak_dbfs: float, lsd_db: float) -> None:
    print(f"GPU figure | {what} | peak difference {peak_dbfs:.1f} dBFS | log-spectral distance {lsd_db:.4f} dB")


def check_delivered(audio: np.ndarray, channels: int, frames: int) -> None:
    assert audio.shape == (channels, frames)
    assert np.isfinite(audio).all()
    assert FLOOR <= np.abs(audio.astype(np.float64)).max() <= CEILING


@pytest.mark.parametrize("stereo", ["mono", "mid_side", "dual_seed"])
@pytest.mark.parametrize("chunking", ["crossfade", "latent_interp"])
def test_cuda_render_has_the_exact_length_and_level_and_is_near_the_cpu_render(models, chunking, stereo):
    gpu_config = config(chunking, stereo, sample_rate=44100)
    on_gpu = GenerationPipeline(models["cuda"], gpu_config).generate([0, 1])
    on_cpu = GenerationPipeline(models["cpu"], gpu_config, device="cpu").generate([0, 1])
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert gpu.device.startswith("cuda")
        check_delivered(gpu.audio, gpu_config.stereo.channels, round(2.0 * 44100))
        peak, lsd = difference(gpu.audio, cpu.audio)
        report(f"cuda against cpu, {chunking} {stereo} seed {gpu.seed}", peak, lsd)
        assert peak <= GPU_VS_CPU_PEAK_DBFS and lsd <= GPU_VS_CPU_LSD_DB


@pytest.mark.parametrize("stereo", ["mono", "dual_seed"])
def test_cuda_one_shots_at_a_loudness_target_are_near_the_cpu_render(models, stereo):
    export = WavExport(sample_rate=48000, normalize=Normalize.loudness, loudness_lufs=-23.0, true_peak_dbtp=-1.0)
    gpu_config = GenerationConfig(
        device="cuda",
        duration_s=1.0,
        chunking=OneshotChunking(),
        stereo=OPTIONS["stereo"][stereo](),
        export=export,
    )
    on_gpu = GenerationPipeline(models["cuda"], gpu_config).generate([0, 1, 2])
    on_cpu = GenerationPipeline(models["cpu"], gpu_config, device="cpu").generate([0, 1, 2])
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert gpu.device.startswith("cuda")
        # the shipped model's sounds never fall 60 dB under their peak: every hit runs its window
        assert gpu.frames == cpu.frames == 48000 and np.all(gpu.audio[:, -240:] == 0)
        level = gpu.level.to_dict()
        assert level["true_peak_dbtp"] <= -1.0
        assert level["reached"] is False or abs(level["integrated_lufs"] + 23.0) < 0.05
        peak, lsd = difference(gpu.audio, cpu.audio)
        report(f"cuda against cpu, oneshot loudness {stereo} seed {gpu.seed}", peak, lsd)
        assert peak <= GPU_VS_CPU_PEAK_DBFS and lsd <= GPU_VS_CPU_LSD_DB


@pytest.mark.parametrize("source", ["file", "corpus", "morph"])
@pytest.mark.parametrize("chunking", ["crossfade", "latent_interp"])
def test_cuda_render_from_a_source_is_near_the_cpu_render_and_judged_alike(models, tmp_path, chunking, source):
    t = np.arange(3 * 48000) / 48000
    for name, freq in (("a.wav", 220.0), ("b.wav", 1760.0)):
        sf.write(tmp_path / name, 0.5 * np.sin(2 * math.pi * freq * t) * np.exp(-0.5 * t), 48000)
    options = {
        "file": FileSource(path=str(tmp_path / "a.wav"), spread=0.3),
        "corpus": CorpusSource(spread=0.0),
        "morph": MorphSource(paths=(str(tmp_path / "a.wav"), str(tmp_path / "b.wav")), spread=0.2),
    }
    gpu_config = config(chunking, "dual_seed", source=options[source])
    on_gpu = GenerationPipeline(models["cuda"], gpu_config).generate([0, 1])
    on_cpu = GenerationPipeline(models["cpu"], gpu_config, device="cpu").generate([0, 1])
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        check_delivered(gpu.audio, 2, round(2.0 * 48000))
        peak, lsd = difference(gpu.audio, cpu.audio)
        report(f"cuda against cpu, source={source} {chunking} dual_seed seed {gpu.seed}", peak, lsd)
        assert peak <= GPU_VS_CPU_PEAK_DBFS and lsd <= GPU_VS_CPU_LSD_DB
        assert gpu.memorization.near_copy == cpu.memorization.near_copy
        assert abs(gpu.memorization.nearest.distance_db - cpu.memorization.nearest.distance_db) < 0.5


@pytest.mark.parametrize(
    "chunking, stereo",
    [("crossfade", "mono"), ("crossfade", "dual_seed"), ("latent_interp", "dual_seed"), ("oneshot", "mid_side")],
)
def test_cuda_item_alone_is_near_the_same_item_in_a_batch_of_eight_and_a_batch_repeats_exactly(
    models, chunking, stereo
):
    seeds = list(range(8))
    batched = GenerationPipeline(models["cuda"], config(chunking, stereo, batch_size=8))
    first = batched.generate(seeds)
    again = batched.generate(seeds)
    assert batched.last_batch_sizes == [8]
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.audio, b.audio), f"seed {a.seed}: the same batch twice gave other bytes"
    alone = GenerationPipeline(models["cuda"], config(chunking, stereo, batch_size=1))
    for index in (0, 7):
        [single] = alone.generate([seeds[index]])
        peak, lsd = difference(single.audio, first[index].audio)
        report(f"cuda alone against batch of 8, {chunking} {stereo} seed {index}", peak, lsd)
        assert peak <= GPU_BATCH_PEAK_DBFS and lsd <= GPU_BATCH_LSD_DB


def test_out_of_memory_with_the_gpu_really_full_halves_the_batch_and_keeps_the_audio(models):
    """The peak memory of batches of 2 and 4 is measured first; then a real allocation fills the
    GPU until only the midpoint between them is free, so batches of 8 and 4 run out of memory,
    are halved, and the audio matches the batch of 8 made with the memory free."""
    long_config = config("crossfade", "mono", duration_s=60.0, batch_size=8)
    pipeline = GenerationPipeline(models["cuda"], long_config)
    extra = {}
    for size in (8, 4, 2):  # biggest first: every later size's FFT plans and buffers already exist
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        results = pipeline.generate_batch(list(range(size)))
        extra[size] = torch.cuda.max_memory_allocated() - base
        if size == 8:
            reference = [r.audio for r in results]
    del results
    print(
        f"GPU figure | peak memory of a 60 s batch: {', '.join(f'{s}: {b / 2**30:.2f} GiB' for s, b in extra.items())}"
    )
    assert extra[2] < extra[4] < extra[8]

    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    leave = (extra[2] + extra[4]) // 2
    filler = torch.empty(free - leave, dtype=torch.uint8, device="cuda")
    try:
        results = pipeline.generate(list(range(8)))
    finally:
        del filler
        torch.cuda.empty_cache()
    print(f"GPU figure | with {leave / 2**30:.2f} GiB left free, batches of {pipeline.last_batch_sizes}")
    assert pipeline.last_batch_sizes == [2, 2, 2, 2]
    assert [r.seed for r in results] == list(range(8))
    for result, expected in zip(results, reference, strict=True):
        peak, lsd = difference(result.audio, expected)
        report(f"cuda batch of 2 after halving against batch of 8, seed {result.seed}", peak, lsd)
        assert peak <= GPU_BATCH_PEAK_DBFS and lsd <= GPU_BATCH_LSD_DB


def read_outputs(folder) -> dict[int, tuple[dict, np.ndarray]]:
    """seed -> (sidecar, audio [channels, frames]) for every output in `folder`."""
    outputs = {}
    for sidecar in folder.glob("gen_*.json"):
        record = json.loads(sidecar.read_text())
        audio, _ = sf.read(folder / record["file"]["name"], dtype="float32", always_2d=True)
        outputs[record["seed"]] = (record, audio.T)
    return outputs


def test_cuda_run_resumes_lost_outputs_and_reproduces_one_on_cuda_and_on_the_cpu(tmp_path):
    job = tmp_path / "job"
    settings = ["device=cuda", "count=8", "batch_size=8", "duration_s=1", "chunking=latent_interp", "stereo=dual_seed"]
    made = run_sda("run", *settings, f"hydra.run.dir={job}", cwd=tmp_path, env=ONE_THREAD)
    assert made.returncode == 0, made.stderr + made.stdout
    original = read_outputs(job)
    assert sorted(original) == list(range(8))
    assert all(record["device"].startswith("cuda") for record, _ in original.values())

    # Two outputs from the middle of the batch are lost; resume= makes them again, as a batch of
    # two: within the batch bound of what the batch of eight made.
    for seed in (3, 5):
        record, _ = original[seed]
        (job / record["file"]["name"]).unlink()
    resumed = run_sda("run", f"resume={job}", cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "sda: 2 done / 6 skipped / 0 failed" in resumed.stdout + resumed.stderr
    again = read_outputs(job)
    assert all(verify_output(p).ok for p in job.glob("gen_*.json"))
    for seed in (3, 5):
        assert again[seed][0]["identity"] == original[seed][0]["identity"]
        peak, lsd = difference(again[seed][1], original[seed][1])
        report(f"cuda resume (batch of 2) against the batch of 8, seed {seed}", peak, lsd)
        assert peak <= GPU_BATCH_PEAK_DBFS and lsd <= GPU_BATCH_LSD_DB

    # reproduce= of seed 6 alone, on the GPU and on the CPU.
    sidecar = next(p for p in job.glob("gen_*.json") if json.loads(p.read_text())["seed"] == 6)
    for device, peak_bound, lsd_bound in (
        ("cuda", GPU_BATCH_PEAK_DBFS, GPU_BATCH_LSD_DB),
        ("cpu", GPU_VS_CPU_PEAK_DBFS, GPU_VS_CPU_LSD_DB),
    ):
        proc = run_sda(
            "run", f"reproduce={sidecar}", f"device={device}", f"hydra.run.dir={device}", cwd=tmp_path, env=ONE_THREAD
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        [(record, audio)] = read_outputs(tmp_path / device).values()
        assert record["identity"] == original[6][0]["identity"]
        exact = record["file"]["sha256"] == original[6][0]["file"]["sha256"]
        peak, lsd = difference(audio, original[6][1])
        report(f"reproduce on {device} (alone) against cuda batch of 8, seed 6, bit-identical: {exact}", peak, lsd)
        assert peak <= peak_bound and lsd <= lsd_bound
        assert math.isfinite(lsd)


# --------------------------------------------------------------------------------------------
# The device paths of long files and of the report (sda.dsp.chain_kernel, quality, picture)


def test_the_chain_kernel_gives_torchs_phases_to_the_bit_and_a_600_s_chain_in_a_fraction_of_a_second():
    assert chain_kernel.kernel_available(torch.device("cuda")), "Triton comes with torch's CUDA builds"
    g = torch.Generator().manual_seed(0)
    items, steps, bins = 5, 700, 1025
    origin = torch.randint(0, bins, (items, steps, bins), generator=g).cuda()
    advance = (torch.rand(items, steps, bins, generator=g) * 1600 - 2).cuda()
    first = (torch.rand(items, bins, generator=g) * 6).cuda()
    kernel = chain_kernel.follow_chain_on_gpu(first, origin, advance)
    assert kernel is not None and torch.equal(kernel, phase._follow_chain(first, origin, advance))

    settings = SpectrogramSettings()
    magnitude = torch.rand(1, settings.n_freqs, 56_250, generator=g).cuda() ** 4  # 600 s at hop 512
    phase.locked_phase(magnitude[..., :100], settings)  # built and cached
    torch.cuda.synchronize()
    started = time.perf_counter()
    phase.locked_phase(magnitude, settings)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(f"GPU figure | locked start of a 600 s spectrogram (56 250 frames): {seconds:.3f} s")
    assert seconds < 1.0


def test_cuda_metrics_and_report_pictures_agree_with_the_cpus():
    g = torch.Generator().manual_seed(1)
    audio = 0.2 * torch.randn(3, 2, 5 * 48000, generator=g)
    audio[1] *= torch.linspace(0, 1, audio.shape[-1])
    audio[2, :, :48000] *= 1e-3
    on_cpu = measure_quality_batch(audio, 48000)
    on_gpu = measure_quality_batch(audio.cuda(), 48000)
    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        lu = gpu.loudness_lufs - cpu.loudness_lufs
        print(f"GPU figure | loudness on cuda (FIR K-weighting) against cpu: {lu:+.6f} LU")
        assert gpu.loudness_lufs == pytest.approx(cpu.loudness_lufs, abs=1e-3)
        assert gpu.rating == cpu.rating and gpu.peak_dbfs == pytest.approx(cpu.peak_dbfs, abs=1e-4)
    levels = spectrogram_levels_batch(audio[:, 0].cuda(), 48000, SPECTROGRAM_PICTURE).cpu().numpy()
    for item, picture in zip(audio[:, 0].numpy(), levels, strict=True):
        reference = spectrogram_levels_db(item, 48000)
        shown = reference > SPECTROGRAM_FLOOR_DB
        assert np.abs(picture - reference)[shown].max() < 0.05
