"""The sync-free / sort-free plan paths give exactly what the plain versions give."""

import pytest
import torch

from spbench.methods import _select as sel
from spbench.plan import Plan, levels_to_csr


def sort_based_csr(levels):
    """The previous levels_to_csr (stable sort over the row), kept as the reference."""
    active = levels > 0
    counts = active.sum(-1, dtype=torch.int32)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    order = torch.sort((~active).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    picked = torch.gather(levels, -1, order).to(torch.int8)
    valid = torch.arange(width) < counts[..., None]
    return counts, torch.where(valid, order, 0).to(torch.int32), torch.where(valid, picked, 0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p_active", [0.0, 0.05, 0.5, 1.0])
def test_levels_to_csr_matches_sort(seed, p_active):
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 3, 5, 37)
    lv = torch.tensor([1, 2, 4, 8], dtype=torch.int8)[torch.randint(0, 4, shape, generator=gen)]
    levels = torch.where(torch.rand(shape, generator=gen) < p_active, lv, torch.zeros_like(lv))
    for got, want in zip(levels_to_csr(levels), sort_based_csr(levels)):
        assert got.dtype == want.dtype and torch.equal(got, want)
    plan = Plan.from_levels(levels, 5 * 128 - 3, 37 * 64 - 10, 128, 64, causal=False)
    for got, want in zip((plan.kv_num_blocks, plan.kv_indices, plan.kv_levels), sort_based_csr(levels)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("causal", [False, True])
def test_from_levels_density_is_exactly_compute_density(causal):
    gen = torch.Generator().manual_seed(7)
    shape = (1, 2, 9, 17)
    lv = torch.tensor([0, 1, 2, 4, 8], dtype=torch.int8)[torch.randint(0, 5, shape, generator=gen)]
    plan = Plan.from_levels(lv, 9 * 64 - 5, 17 * 32 - 3, 64, 32, causal=causal, deferred={"x": torch.tensor(0.25)})
    assert plan.density == plan.compute_density()  # exact, not approx
    assert plan.stats["x"] == 0.25


def test_rank_blocks_flags_do_not_change_the_order():
    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(2, 2, 6, 11, generator=gen)
    visible = torch.ones(6, 11, dtype=torch.bool)
    forced = torch.zeros(6, 11, dtype=torch.bool)
    forced[:, 2] = True
    plain = sel.rank_blocks(scores, visible, forced)
    fast = sel.rank_blocks(scores, visible, forced, ranked=False, all_visible=True, any_forced=True)
    assert torch.equal(plain[0], fast[0]) and fast[1] is None
    none_forced = torch.zeros_like(forced)
    assert torch.equal(sel.rank_blocks(scores, visible, none_forced)[0], sel.rank_blocks(scores, visible, none_forced, all_visible=True, any_forced=False)[0])


def test_layout_and_budget_keep_are_cached_and_match():
    lay = sel.layout(1000, 900, 128, 64, True, True, False)
    assert lay is sel.layout(1000, 900, 128, 64, True, True, False)
    assert torch.equal(lay.forced, sel.forced_blocks(1000, 900, 128, 64, True, True, False))
    counts = sel.budget_counts(0.2, 1000, 900, 128, 64, True, lay.forced)
    keep = sel.budget_keep(0.2, 1000, 900, 128, 64, True, True, False)
    assert torch.equal(keep.bool(), sel.keep_by_count(counts, lay.visible.shape[-1]))
