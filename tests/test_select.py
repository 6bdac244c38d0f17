"""Shared block-selection helpers (methods/_select.py) against brute-force definitions."""

import math

import pytest
import torch

from spbench.methods import _select as sel
from spbench.plan import block_areas


@pytest.mark.parametrize("length,block", [(256, 64), (300, 64), (50, 64), (129, 128)])
def test_block_means_match_loop(length, block):
    x = torch.randn(2, 3, length, 8, dtype=torch.float64)
    got = sel.block_means(x.to(torch.bfloat16), block)
    assert got.dtype == torch.float32
    want = torch.stack([x[:, :, s : s + block].mean(2) for s in range(0, length, block)], dim=2)
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=0)
    torch.testing.assert_close(sel.block_means(x.float(), block).double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lq,lk,bq,bk", [(512, 512, 128, 64), (300, 300, 128, 64), (256, 200, 64, 64), (200, 100, 64, 32)])
def test_causal_diagonal_holds_every_querys_own_key(lq, lk, bq, bk):
    forced = sel.forced_blocks(lq, lk, bq, bk, causal=True, diagonal=True, sink=False)
    visible = sel.block_visibility(lq, lk, bq, bk, causal=True)
    assert not (forced & ~visible).any()
    for t in range(min(lq, lk)):  # query t's own key t lies in a forced block of its query block
        assert forced[t // bq, t // bk]
    # and nothing else: forced blocks overlap the query block's positions
    for i in range(forced.shape[0]):
        for j in range(forced.shape[1]):
            overlap = j * bk < min(lq, (i + 1) * bq) and min(lk, (j + 1) * bk) > i * bq
            assert bool(forced[i, j]) == (overlap or (i * bq >= lk and j == forced.shape[1] - 1))


def test_sink_and_visibility():
    forced = sel.forced_blocks(512, 512, 128, 64, causal=False, diagonal=False, sink=True)
    assert forced[:, 0].all() and not forced[:, 1:].any()
    vis = sel.block_visibility(512, 512, 128, 64, causal=True)
    assert torch.equal(vis, block_areas(512, 512, 128, 64, True) > 0)
    assert not vis[0, 2] and vis[1, 3] and not vis[1, 4]


def test_rank_blocks_orders_forced_then_score_then_invisible():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(2, 3, 4, 10, generator=g)
    visible = torch.rand(4, 10, generator=g) > 0.3
    visible[:, 0] = True
    forced = torch.zeros(4, 10, dtype=torch.bool)
    forced[:, 0] = True
    forced[1, 5] = visible[1, 5]
    order, ranked = sel.rank_blocks(scores, visible, forced)
    for b in range(2):
        for h in range(3):
            for i in range(4):
                o = order[b, h, i].tolist()
                nf, nv = int(forced[i].sum()), int(visible[i].sum())
                assert set(o[:nf]) == set(torch.nonzero(forced[i]).flatten().tolist())
                assert all(visible[i, j] for j in o[:nv]) and not any(visible[i, j] for j in o[nv:])
                middle = [float(scores[b, h, i, j]) for j in o[nf:nv]]
                assert middle == sorted(middle, reverse=True)
                assert torch.equal(ranked[b, h, i], torch.where(visible[i], scores[b, h, i], 0.0)[o])
    # unsort inverts the order
    assert torch.equal(sel.unsort(ranked, order), torch.where(visible, scores, 0.0))


def test_keep_by_mass_is_the_smallest_prefix_reaching_tau():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(1, 2, 6, 12, generator=g) ** 3
    visible = torch.ones(6, 12, dtype=torch.bool)
    visible[0, 6:] = False
    forced = torch.zeros(6, 12, dtype=torch.bool)
    forced[:, 3] = True
    n_visible, n_forced = sel.row_counts(visible, forced)
    _, ranked = sel.rank_blocks(scores, visible, forced)
    for tau in (0.3, 0.9, 1.0):
        keep = sel.keep_by_mass(ranked, tau, n_forced, n_visible)
        for h in range(2):
            for i in range(6):
                row, got = ranked[0, h, i].double(), keep[0, h, i]
                n = int(got.sum())
                assert got[:n].all(), "kept blocks form a rank prefix"
                assert int(n_forced[i]) <= n <= int(n_visible[i])
                total = float(row.sum())
                if n > int(n_forced[i]):  # the last kept block was needed
                    assert float(row[: n - 1].sum()) < tau * total * (1 + 1e-6)
                if n < int(n_visible[i]):  # and the prefix reaches tau
                    assert float(row[:n].sum()) >= tau * total * (1 - 1e-6)
        if tau == 1.0:
            assert torch.equal(keep.sum(-1), n_visible.expand(1, 2, 6))


def test_diffuse_round_tracks_total():
    target = torch.full((37,), 1.6, dtype=torch.float64)
    counts = sel.diffuse_round(target)
    assert int(counts.sum()) == round(1.6 * 37)
    assert set(counts.tolist()) <= {1, 2}
    ragged = torch.rand(50, dtype=torch.float64) * 5
    counts = sel.diffuse_round(ragged)
    assert abs(int(counts.sum()) - float(ragged.sum())) <= 0.5 + 1e-9
    assert ((counts - ragged).abs() < 1.0 + 1e-9).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("budget", [0.05, 0.2, 0.5, 1.0])
def test_budget_counts_hit_area(causal, budget):
    lq = lk = 8192
    bq, bk = 128, 64
    forced = sel.forced_blocks(lq, lk, bq, bk, causal, diagonal=causal, sink=False)
    counts = sel.budget_counts(budget, lq, lk, bq, bk, causal, forced)
    n_visible, n_forced = sel.row_counts(sel.block_visibility(lq, lk, bq, bk, causal), forced)
    assert (counts >= n_forced.clamp(min=1)).all() and (counts <= n_visible).all()
    if budget == 1.0:
        assert torch.equal(counts, n_visible)
    # keep the forced blocks then the next (full) blocks: planned area vs budget
    areas = block_areas(lq, lk, bq, bk, causal)
    kept = 0.0
    for i in range(areas.shape[0]):
        forced_area = float(areas[i][forced[i]].sum())
        full = bq * bk
        kept += forced_area + (int(counts[i]) - int(n_forced[i])) * full
    density = kept / float(areas.sum())
    assert density == pytest.approx(budget, rel=0.05 if not causal else 0.2)


@pytest.mark.parametrize("budget", [0.02, 0.05, 0.15, 0.3, 0.5, 0.9, 1.0])
def test_profile_at_budget_meets_budget(budget):
    fractions = (0.10, 0.05, 0.0, 0.20)
    cum = sel.profile_at_budget(fractions, budget)
    assert all(a <= b + 1e-12 for a, b in zip(cum, cum[1:]))
    share = cum[0] * 1 + (cum[1] - cum[0]) / 2 + (cum[2] - cum[1]) / 4 + (cum[3] - cum[2]) / 8
    assert share == pytest.approx(budget, abs=1e-9)
    if budget == 1.0:
        assert cum == pytest.approx((1.0, 1.0, 1.0, 1.0))


def test_profile_at_its_own_density_is_the_profile():
    fractions = (0.10, 0.05, 0.0, 0.20)  # density 0.1 + 0.025 + 0.025 = 0.15
    assert sel.profile_at_budget(fractions, 0.15) == pytest.approx((0.10, 0.15, 0.15, 0.35))
    with pytest.raises(ValueError):
        sel.profile_at_budget((0.0, 0.1, 0.0, 0.2), 0.1)


def test_level_from_rank():
    bounds = [torch.tensor([1, 2]), torch.tensor([2, 2]), torch.tensor([2, 3]), torch.tensor([4, 5])]
    got = sel.level_from_rank(torch.arange(6), bounds)
    assert got.tolist() == [[1, 2, 8, 8, 0, 0], [1, 1, 4, 8, 8, 0]]
    assert got.dtype == torch.int8
    assert math.isclose(sel.LEVEL_COST[3], 0.125)
