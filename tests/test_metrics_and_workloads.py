import torch

from spbench.kernels.reference import exact_attention
from spbench.metrics import compare, quality_vs_exact, sample_rows
from spbench.workloads import block_mass_concentration, grid_for_seq, grid_positions, make_qkv


def test_sampled_row_metrics_match_full_computation():
    q, k, v = make_qkv("random", 1, 2, 2, 600, 32, seed=1)
    out = exact_attention(q, k, v) + 0.01 * torch.randn(1, 2, 600, 32)
    full = compare(out, exact_attention(q, k, v))
    rows = sample_rows(600, 600)
    assert rows.numel() == 600
    sampled = quality_vs_exact(q, k, v, out, n_rows=600)
    for key in ("rel_l2", "cosine", "max_abs"):
        assert abs(sampled[key] - full[key]) < 1e-6
    # With a sample, the estimate is close to the full value and uses only those rows.
    partial = quality_vs_exact(q, k, v, out, n_rows=200)
    assert partial["error_rows"] == 200
    assert abs(partial["rel_l2"] - full["rel_l2"]) / full["rel_l2"] < 0.2


def test_metric_detects_error():
    a = torch.randn(100)
    assert compare(a, a)["rel_l2"] == 0.0
    assert compare(a + 1, a)["max_abs"] > 0.99
    assert compare(-a, a)["cosine"] < -0.99


def test_workloads_are_seeded_and_shaped():
    a = make_qkv("video", 1, 4, 2, 1000, 64, seed=3)
    b = make_qkv("video", 1, 4, 2, 1000, 64, seed=3)
    c = make_qkv("video", 1, 4, 2, 1000, 64, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (1, 4, 1000, 64) and a[1].shape == (1, 2, 1000, 64)
    r = make_qkv("random", 2, 2, 1, 50, 16, kv_seq=70)
    assert r[1].shape == (2, 1, 70, 16)


def test_grid_covers_sequence():
    for seq in (1, 77, 1000, 32768, 110_000):
        t, h, w = grid_for_seq(seq)
        assert t * h * w >= seq and (t - 1) * h * w < seq
    pos = grid_positions(10, (2, 2, 3))
    assert pos[4].tolist() == [0.0, 1.0, 1.0] and pos[6].tolist() == [1.0, 0.0, 0.0]


def test_video_attention_is_concentrated_random_is_not():
    q, k, _ = make_qkv("video", 1, 2, 2, 8192, 128, seed=0)
    rq, rk, _ = make_qkv("random", 1, 2, 2, 8192, 128, seed=0)
    video = block_mass_concentration(q, k, max_query_blocks=4)
    rand = block_mass_concentration(rq, rk, max_query_blocks=4)
    assert video > 0.6, video
    assert rand < 0.2, rand
