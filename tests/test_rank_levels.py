"""kernels/rank_levels.py: sort-free rank-bound levels equal the stable-sort rule, ties included; plan_csr row kernels."""

import pytest
import torch

from spbench import plan as plan_mod
from spbench.kernels.rank_levels import rank_levels
from spbench.methods import _select as sel
from spbench.plan import Plan, block_areas


def sorted_levels(scores, visible, forced, bounds):
    """The rule through a stable sort: forced first, then descending score, ties by lower KV index."""
    order, _ = sel.rank_blocks(scores, visible, forced, False, stable=True)
    ranked = sel.level_from_rank(torch.arange(scores.shape[-1]), list(bounds.unbind(-1)))
    return sel.unsort(ranked, order)


def random_bounds(n_visible, n_forced, gen, zero_row=None):
    rows = []
    for i, (nv, nf) in enumerate(zip(n_visible.tolist(), n_forced.tolist())):
        picks = sorted(torch.randint(0, nv + 1, (4,), generator=gen).tolist())
        first = max(picks[0], nf)
        rows.append([0, 0, 0, 0] if i == zero_row and nf == 0 else [max(p, first) for p in picks])
    return torch.tensor(rows, dtype=torch.int32)


@pytest.mark.parametrize("nkv", [1, 37, 64, 130])
@pytest.mark.parametrize("ties", [False, True])
def test_rank_levels_equal_stable_sort(nkv, ties):
    gen = torch.Generator().manual_seed(nkv + 7 * ties)
    nq = 6
    visible = torch.rand(nq, nkv, generator=gen) < 0.8
    visible[:, 0] = True
    forced = visible & (torch.rand(nq, nkv, generator=gen) < 0.15)
    if ties:  # few distinct values, exact zeros, whole rows of one value
        scores = torch.randint(0, 4, (2, 3, nq, nkv), generator=gen).float() / 3
        scores[0, 1, 2] = 0.5
        scores[1, 0, 3] = 0.0
    else:
        scores = torch.rand(2, 3, nq, nkv, generator=gen) ** 3
    scores = scores.masked_fill(~visible, 0.0)
    bounds = random_bounds(visible.sum(-1), forced.sum(-1), gen, zero_row=1)
    got = rank_levels(scores, visible, forced, bounds)
    assert got.dtype == torch.int8
    assert torch.equal(got, sorted_levels(scores, visible, forced, bounds))


def test_rank_levels_all_visible_flag_and_full_bounds():
    gen = torch.Generator().manual_seed(1)
    nq, nkv = 4, 50
    visible = torch.ones(nq, nkv, dtype=torch.bool)
    forced = torch.zeros(nq, nkv, dtype=torch.bool)
    forced[:, 3] = True
    scores = torch.rand(1, 2, nq, nkv, generator=gen)
    scores[..., 3] = 0.0  # a forced block with no score still ranks first
    bounds = torch.tensor([[1, 1, 1, 1], [1, 5, 5, 9], [10, 20, 30, 50], [50, 50, 50, 50]], dtype=torch.int32)
    want = sorted_levels(scores, visible, forced, bounds)
    for flag in (False, True):
        assert torch.equal(rank_levels(scores, visible, forced, bounds, all_visible=flag), want)
    assert (want[..., 3] == 1).all() and (want[:, :, 3] == 1).all()  # full bounds: everything level 1


def test_rank_levels_tie_rule_is_lower_index_first():
    scores = torch.tensor([0.2, 0.5, 0.2, 0.2, 0.1]).view(1, 1, 1, 5)
    visible, forced = torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5, dtype=torch.bool)
    levels = rank_levels(scores, visible, forced, torch.tensor([[1, 2, 3, 4]]))
    assert levels.flatten().tolist() == [2, 1, 4, 8, 0]  # of the three 0.2s, index 0 then 2 then 3


def test_rank_levels_bad_shapes():
    with pytest.raises(ValueError, match="bounds"):
        rank_levels(torch.rand(1, 1, 2, 3), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 3))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", ["generation", "understanding"])
def test_psa_budget_plan_same_levels_with_sort_free_path(causal, variant, monkeypatch):
    """plan(): the Triton rank kernel and the stable-sort torch path give the same levels (sim_cap on)."""
    from spbench.methods.psa import PSA

    q, k, v = torch.randn(1, 2, 1100, 64), torch.randn(1, 1, 1100, 64), torch.randn(1, 1, 1100, 64)
    gen = torch.Generator().manual_seed(5)
    visible = block_areas(1100, 1100, 128, 64, causal) > 0
    scores = torch.randint(0, 6, (1, 2, 9, 18), generator=gen).float().masked_fill(~visible, 0)  # ties on purpose
    scores = scores / scores.sum(-1, keepdim=True)
    for budget, mode in ((0.1, "topk"), (0.3, "topk"), (None, "topk")):
        plans = []
        for scorer in ("triton", "torch"):
            m = PSA(variant=variant, causal=causal, budget=budget, mode=mode, scorer=scorer, sim_cap=True)
            m.importance = lambda q, k: scores
            plans.append(m.plan(q, k, v))
        assert torch.equal(plans[0].to_levels(), plans[1].to_levels())
        assert plans[0].density == plans[1].density


# ---------------------------------------------------------------- plan_csr (Plan.from_levels on the GPU)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("p_active", [0.0, 0.3, 1.0])
def test_from_levels_row_kernels_equal_torch_path(causal, p_active, monkeypatch):
    gen = torch.Generator().manual_seed(int(p_active * 10) + causal)
    shape = (2, 3, 5, 37)
    lv = torch.tensor([1, 2, 4, 8], dtype=torch.int8)[torch.randint(0, 4, shape, generator=gen)]
    levels = torch.where(torch.rand(shape, generator=gen) < p_active, lv, torch.zeros_like(lv))
    args = (levels, 5 * 128 - 3, 37 * 64 - 10, 128, 64, causal)
    want = Plan.from_levels(*args, deferred={"x": torch.tensor(0.5)})
    calls = []
    monkeypatch.setattr(plan_mod, "_row_kernels", lambda t: calls.append(1) or True)
    got = Plan.from_levels(*args, deferred={"x": torch.tensor(0.5)})
    assert calls
    for a, b in ((got.kv_num_blocks, want.kv_num_blocks), (got.kv_indices, want.kv_indices), (got.kv_levels, want.kv_levels)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert got.density == want.density == got.compute_density()
    assert got.stats["x"] == 0.5


@pytest.mark.parametrize("bad", [3, -1, 16, 6])
def test_from_levels_row_kernels_reject_bad_levels(bad, monkeypatch):
    monkeypatch.setattr(plan_mod, "_row_kernels", lambda t: True)
    levels = torch.ones(1, 1, 2, 3, dtype=torch.int8)
    levels[0, 0, 1, 2] = bad
    with pytest.raises(ValueError, match="levels must be in"):
        Plan.from_levels(levels, 200, 150, 128, 64)


def test_new_kernels_compile_for_h100_without_spills():
    from sm90_compile import sm90_resources

    for module, kernel, consts, pointers in (
        ("spbench.kernels.rank_levels", "_rank_levels", [dict(NKV_P2=2048, CHECK_VISIBLE=c) for c in (0, 1)],
         {"S": "*fp32", "FORCED": "*u8", "VISIBLE": "*u8", "BOUNDS": "*i32", "OUT": "*i8"}),
        ("spbench.kernels.plan_csr", "_row_stats", [dict(NKV_P2=2048)], {"LV": "*i8", "AREA": "*i64", "COUNTS": "*i32", "AREA8": "*i64", "BAD": "*i32"}),
        ("spbench.kernels.plan_csr", "_compact_rows", [dict(NKV_P2=2048)], {"LV": "*i8", "IDX": "*i32", "OUT_LV": "*i8"}),
    ):
        configs = [{"constexprs": c, "options": {"num_warps": 4, "num_stages": 1}} for c in consts]
        for res in sm90_resources(module, kernel, configs, pointers):
            assert res["STACK"] == 0, (kernel, res)
