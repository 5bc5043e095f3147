import math

import pytest
import torch

from sda.dsp.chunking import (
    PARALLEL_COS,
    cola_window,
    crossfade_curves,
    equal_power_crossfade,
    interpolate_anchors,
    oneshot_layout,
    overlap_add_frames,
    slerp,
)


def gaussian(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- slerp -----------------------------------------------------------------------------------


def test_slerp_returns_endpoints_exactly():
    a, b = gaussian(4, 64, seed=1), gaussian(4, 64, seed=2)
    assert torch.equal(slerp(a, b, 0.0), a)
    assert torch.equal(slerp(a, b, 1.0), b)
    t = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert torch.equal(slerp(a, b, t), torch.stack([a[0], b[1], a[2], b[3]]))


def test_slerp_midpoint_of_orthogonal_unit_vectors_has_norm_1_and_equal_angles():
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.tensor([0.0, 1.0, 0.0])
    mid = slerp(a, b, 0.5)
    assert torch.linalg.vector_norm(mid).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.dot(mid, a).item() == pytest.approx(math.cos(math.pi / 4), abs=1e-6)
    assert torch.dot(mid, b).item() == pytest.approx(math.cos(math.pi / 4), abs=1e-6)
    # A quarter of the way: a quarter of the angle.
    quarter = slerp(a, b, 0.25)
    assert math.degrees(math.acos(torch.dot(quarter, a).item())) == pytest.approx(22.5, abs=1e-3)


def test_slerp_interpolates_norm_linearly_keeping_gaussian_latent_magnitude():
    a, b = gaussian(256, 128, seed=3), gaussian(256, 128, seed=4)
    mid = slerp(a, b, 0.5)
    expected = (torch.linalg.vector_norm(a, dim=-1) + torch.linalg.vector_norm(b, dim=-1)) / 2
    torch.testing.assert_close(torch.linalg.vector_norm(mid, dim=-1), expected, rtol=1e-5, atol=0)
    # A straight line through two independent Gaussians shrinks by about 1/sqrt(2) midway.
    lerp_norm = torch.linalg.vector_norm((a + b) / 2, dim=-1).mean() / expected.mean()
    assert lerp_norm.item() == pytest.approx(1 / math.sqrt(2), abs=0.03)


def test_slerp_of_nearly_parallel_vectors_is_finite_and_close_to_lerp():
    a = gaussian(8, 32, seed=5)
    b = a + 1e-4 * gaussian(8, 32, seed=6)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert (cos > PARALLEL_COS).all()
    t = torch.linspace(0, 1, 8)
    out = slerp(a, b, t)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, a + t[:, None] * (b - a), atol=1e-6, rtol=0)


def test_slerp_of_zero_and_antiparallel_vectors_stays_finite():
    a = gaussian(3, 16, seed=7)
    zero = torch.zeros(3, 16)
    for t in [0.25, 0.5, 0.75]:
        assert torch.isfinite(slerp(a, -a, t)).all()
        torch.testing.assert_close(slerp(zero, a, t), t * a)
        torch.testing.assert_close(slerp(zero, zero, t), zero)


def test_slerp_just_outside_the_parallel_threshold_is_accurate():
    # cos = 0.999 is handled by the spherical branch: still unit norm for unit vectors.
    angle = math.acos(0.999)
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    mid = slerp(a, b, 0.5)
    assert torch.linalg.vector_norm(mid).item() == pytest.approx(1.0, abs=1e-12)
    assert math.atan2(mid[1].item(), mid[0].item()) == pytest.approx(angle / 2, rel=1e-9)


# --- interpolate_anchors ---------------------------------------------------------------------


def test_interpolate_anchors_returns_anchors_exactly_at_integer_positions():
    anchors = gaussian(2, 4, 32, seed=8)
    out = interpolate_anchors(anchors, torch.tensor([0.0, 1.0, 2.0, 3.0, 2.0]))
    assert out.shape == (2, 5, 32)
    assert torch.equal(out[:, :4], anchors)
    assert torch.equal(out[:, 4], anchors[:, 2])


def test_interpolate_anchors_slerps_between_surrounding_anchors_and_clamps():
    anchors = gaussian(2, 3, 32, seed=9)
    positions = torch.tensor([-1.0, 0.3, 1.75, 5.0])
    out = interpolate_anchors(anchors, positions)
    assert torch.equal(out[:, 0], anchors[:, 0])
    torch.testing.assert_close(out[:, 1], slerp(anchors[:, 0], anchors[:, 1], 0.3))
    torch.testing.assert_close(out[:, 2], slerp(anchors[:, 1], anchors[:, 2], 0.75))
    assert torch.equal(out[:, 3], anchors[:, 2])


def test_interpolate_anchors_with_a_single_anchor_repeats_it():
    anchors = gaussian(1, 1, 8, seed=10)
    out = interpolate_anchors(anchors, torch.tensor([0.0, 0.5, 2.0]))
    assert torch.equal(out, anchors.expand(1, 3, 8))


# --- equal_power_crossfade -------------------------------------------------------------------


@pytest.mark.parametrize("n_chunks, chunk_samples, overlap", [(1, 100, 50), (3, 100, 0), (4, 101, 50), (5, 64, 17)])
def test_crossfade_output_length_is_chunks_minus_overlaps(n_chunks, chunk_samples, overlap):
    out = equal_power_crossfade(gaussian(2, n_chunks, 2, chunk_samples), overlap)
    assert out.shape == (2, 2, n_chunks * chunk_samples - (n_chunks - 1) * overlap)


def test_crossfade_without_overlap_concatenates_and_single_chunk_is_unchanged():
    chunks = gaussian(1, 3, 2, 10)
    assert torch.equal(equal_power_crossfade(chunks, 0), torch.cat(list(chunks[0].unbind(0)), dim=-1)[None])
    assert torch.equal(equal_power_crossfade(chunks[:, :1], 5), chunks[:, 0])


def test_crossfade_curves_are_symmetric_and_power_complementary():
    fade_in, fade_out = crossfade_curves(7, "cpu", torch.float64)
    torch.testing.assert_close(fade_out, fade_in.flip(0))
    torch.testing.assert_close(fade_in**2 + fade_out**2, torch.ones(7, dtype=torch.float64))
    assert 0 < fade_in[0] < 0.5 and fade_in[-1] < 1


def test_crossfade_keeps_ones_outside_joins_and_places_fades_on_the_right_samples():
    chunks = torch.ones(1, 3, 1, 20)
    out = equal_power_crossfade(chunks, 8)[0, 0]
    fade_in, fade_out = crossfade_curves(8, "cpu", torch.float32)
    torch.testing.assert_close(out[12:20], fade_in + fade_out)
    torch.testing.assert_close(out[24:32], fade_in + fade_out)
    assert torch.equal(out[:12], torch.ones(12)) and torch.equal(out[20:24], torch.ones(4))
    assert torch.equal(out[32:], torch.ones(12))


def test_crossfade_of_independent_noise_keeps_short_time_rms_and_has_no_jump():
    chunk_samples, overlap = 4800, 2400
    out = equal_power_crossfade(gaussian(64, 3, 1, chunk_samples, seed=11), overlap)[:, 0]
    hop = chunk_samples - overlap
    # RMS over the 64 independent items, per 240-sample block: level across the joins vs elsewhere.
    block_rms = out.reshape(64, -1, 240).pow(2).mean(dim=(0, 2)).sqrt()
    reference = out[:, :hop].pow(2).mean().sqrt()
    deviation_db = 20 * torch.log10(block_rms / reference)
    assert deviation_db.abs().max().item() < 1.0
    steps = out.diff(dim=-1).abs()
    joins = torch.cat([torch.arange(hop - 2, hop + overlap + 2), torch.arange(2 * hop - 2, 2 * hop + overlap + 2)])
    elsewhere = torch.ones(out.shape[-1] - 1, dtype=torch.bool)
    elsewhere[joins] = False
    assert steps[:, joins].max() <= steps[:, elsewhere].max()


def test_crossfade_rejects_overlap_beyond_half_a_chunk():
    with pytest.raises(ValueError, match="overlap_samples=51"):
        equal_power_crossfade(torch.zeros(1, 2, 1, 101), 51)
    with pytest.raises(ValueError, match="overlap_samples=-1"):
        equal_power_crossfade(torch.zeros(1, 2, 1, 100), -1)


# --- cola_window and overlap_add_frames ------------------------------------------------------


@pytest.mark.parametrize("n_frames, hop_frames", [(94, 47), (96, 24), (94, 30), (10, 10), (11, 7), (8, 1), (2, 1)])
def test_cola_window_shifted_copies_sum_to_a_constant(n_frames, hop_frames):
    window = cola_window(n_frames, hop_frames, dtype=torch.float64)
    assert window.shape == (n_frames,) and (window > 0).all()
    assert window.max().item() == pytest.approx(1.0, abs=1e-12)
    copies = math.ceil(n_frames / hop_frames) + 4
    total = torch.zeros((copies - 1) * hop_frames + n_frames, dtype=torch.float64)
    for k in range(copies):
        total[k * hop_frames : k * hop_frames + n_frames] += window
    steady = total[n_frames:-n_frames]
    torch.testing.assert_close(steady, torch.full_like(steady, steady[0].item()), atol=1e-12, rtol=0)


def test_cola_window_rejects_hop_outside_1_to_n():
    with pytest.raises(ValueError, match="hop_frames=11"):
        cola_window(10, 11)
    with pytest.raises(ValueError, match="hop_frames=0"):
        cola_window(10, 0)


@pytest.mark.parametrize("frames, hop", [(94, 47), (94, 30), (32, 32)])
def test_overlap_add_of_ones_gives_exactly_ones_edges_included(frames, hop):
    windows = torch.ones(2, 5, 3, frames)
    out = overlap_add_frames(windows, hop, cola_window(frames, hop))
    assert out.shape == (2, 3, 4 * hop + frames)
    assert torch.equal(out, torch.ones_like(out))


def test_overlap_add_of_windows_cut_from_a_long_spectrogram_returns_it():
    frames, hop, n_windows = 94, 47, 7
    total = (n_windows - 1) * hop + frames
    spectrogram = gaussian(2, 16, total, seed=12).abs()
    windows = spectrogram.unfold(-1, frames, hop).permute(0, 2, 1, 3)  # [B, n_windows, F, T]
    assert windows.shape == (2, n_windows, 16, frames)
    out = overlap_add_frames(windows, hop, cola_window(frames, hop))
    torch.testing.assert_close(out, spectrogram, atol=1e-6, rtol=1e-6)


def test_overlap_add_crossfades_differing_windows_with_cola_weights():
    # Window 0 holds 0, window 1 holds 1: in the overlap the output is the second window's share of the weight.
    frames, hop = 8, 4
    window = cola_window(frames, hop, dtype=torch.float64)
    windows = torch.stack([torch.zeros(1, frames), torch.ones(1, frames)])[None].double()
    out = overlap_add_frames(windows, hop, window)[0, 0]
    share = window[:hop] / (window[:hop] + window[hop:])
    torch.testing.assert_close(out[hop:frames], share)
    assert torch.equal(out[:hop], torch.zeros(hop, dtype=torch.float64))
    assert torch.equal(out[frames:], torch.ones(hop, dtype=torch.float64))


def test_overlap_add_gives_zero_where_the_window_weight_is_zero():
    window = torch.tensor([0.0, 1.0, 1.0, 0.0])
    out = overlap_add_frames(torch.full((1, 1, 1, 4), 3.0), 4, window)
    assert torch.equal(out, torch.tensor([[[0.0, 3.0, 3.0, 0.0]]]))


@pytest.mark.parametrize("samples, longest", [(100, 100), (48000, 48000), (480000, 48000)])
def test_a_one_shot_is_one_window_rebuilt_after_silence_and_at_most_that_window(samples, longest):
    layout = oneshot_layout(samples, 48000, 512)
    assert layout.longest == longest and layout.window == 48000
    assert layout.start == layout.pre_roll_frames * 512 >= 1024  # the frames reaching before the window
    assert layout.length == layout.start + 48000
