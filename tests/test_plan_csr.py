"""kernels/plan_csr.py: Plan.from_levels through the row kernels equals the torch path."""

import pytest
import torch

from spbench import plan as plan_mod
from spbench.plan import Plan


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
        ("spbench.kernels.plan_csr", "_row_stats", [dict(NKV_P2=2048)], {"LV": "*i8", "AREA": "*i64", "COUNTS": "*i32", "AREA8": "*i64", "BAD": "*i32"}),
        ("spbench.kernels.plan_csr", "_compact_rows", [dict(NKV_P2=2048)], {"LV": "*i8", "IDX": "*i32", "OUT_LV": "*i8"}),
    ):
        configs = [{"constexprs": c, "options": {"num_warps": 4, "num_stages": 1}} for c in consts]
        for res in sm90_resources(module, kernel, configs, pointers):
            assert res["STACK"] == 0, (kernel, res)
