import pytest
import torch

from spbench.plan import Plan, block_areas, csr_to_levels, density_of_levels, levels_to_csr


def brute_areas(lq, lk, bq, bk, causal):
    t = torch.arange(lq)[:, None]
    s = torch.arange(lk)[None, :]
    vis = (s <= t) if causal else torch.ones(lq, lk, dtype=torch.bool)
    nq, nk = -(-lq // bq), -(-lk // bk)
    out = torch.zeros(nq, nk, dtype=torch.float64)
    for i in range(nq):
        for j in range(nk):
            out[i, j] = vis[i * bq : (i + 1) * bq, j * bk : (j + 1) * bk].sum()
    return out


@pytest.mark.parametrize("lq,lk,bq,bk", [(100, 100, 64, 32), (130, 77, 64, 64), (50, 200, 128, 32), (257, 129, 128, 128)])
@pytest.mark.parametrize("causal", [False, True])
def test_block_areas_match_brute_force(lq, lk, bq, bk, causal):
    assert torch.equal(block_areas(lq, lk, bq, bk, causal), brute_areas(lq, lk, bq, bk, causal))


def random_levels(shape, p_zero=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    choice = torch.tensor([1, 2, 4, 8])[torch.randint(0, 4, shape, generator=g)]
    return torch.where(torch.rand(shape, generator=g) < p_zero, torch.zeros_like(choice), choice)


def test_csr_round_trip():
    levels = random_levels((2, 3, 5, 7))
    counts, idx, lv = levels_to_csr(levels)
    assert torch.equal(counts, (levels > 0).sum(-1).int())
    assert torch.equal(csr_to_levels(counts, idx, lv, 7), levels.to(torch.int8))
    # indices ascending within the valid prefix
    for b, h, q in [(0, 0, 0), (1, 2, 4)]:
        n = int(counts[b, h, q])
        assert torch.all(idx[b, h, q, 1:n] > idx[b, h, q, : n - 1])


@pytest.mark.parametrize("causal", [False, True])
def test_density_definition(causal):
    lq, lk, bq, bk = 200, 150, 64, 32
    levels = random_levels((1, 2, 4, 5), seed=3)
    plan = Plan.from_levels(levels, lq, lk, bq, bk, causal)
    areas = brute_areas(lq, lk, bq, bk, causal)
    w = torch.where(levels > 0, 1.0 / levels.clamp(min=1).double(), torch.zeros(()).double())
    expect = float((w * areas).sum() / (areas.sum() * 2))
    assert plan.density == pytest.approx(expect)
    assert density_of_levels(levels, lq, lk, bq, bk, causal) == pytest.approx(expect)
    assert Plan.from_levels(torch.ones_like(levels), lq, lk, bq, bk, causal).density == pytest.approx(1.0)


def test_level_validation():
    with pytest.raises(ValueError):
        Plan.from_levels(torch.full((1, 1, 1, 1), 3), 10, 10, 64, 64)
    with pytest.raises(ValueError):
        Plan.from_levels(torch.ones(1, 1, 2, 1), 10, 10, 64, 64)
