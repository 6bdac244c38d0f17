"""The planner-free ``levels`` method: seeded level maps at a chosen mix."""

import tomllib
from pathlib import Path

import pytest
import torch

import spbench
from spbench.errors import SpbenchError
from spbench.kernels.reference import pyramid_attention_reference
from spbench.methods.levels import mix_density, parse_mix, random_level_map
from spbench.plan import block_areas
from spbench.registry import BUILTIN

ROOT = Path(__file__).resolve().parents[1]


def test_registered_in_builtin_and_entry_points():
    assert BUILTIN["levels"] == "spbench.methods.levels:Levels"
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["spbench.methods"]
    assert eps["levels"] == BUILTIN["levels"]
    assert type(spbench.get_method("levels")).__name__ == "Levels"


def test_parse_mix():
    assert parse_mix("1:0.10, 2:0.05,8:0.20") == {1: 0.10, 2: 0.05, 8: 0.20}
    assert mix_density({1: 0.1, 2: 0.05, 8: 0.2}) == pytest.approx(0.15)
    for bad in ("3:0.1", "1:1.5", "1-0.2", "1:0.6,2:0.6", "1:0.1,1:0.2", ""):
        with pytest.raises(SpbenchError):
            parse_mix(bad)
    with pytest.raises(SpbenchError):
        spbench.get_method("levels", mix="1:0.9,2:0.05", budget=0.99)  # would need more than the row


def test_mix_fractions_per_row_and_density():
    levels = random_level_map(2, 3, 4096, 4096, 128, 64, {1: 0.10, 2: 0.05, 8: 0.20}, False, 0, "cpu")
    assert levels.shape == (2, 3, 32, 64) and levels.dtype == torch.int8
    per_row = {p: (levels == p).sum(-1) for p in (1, 2, 8)}
    assert (per_row[1] == 6).all() and (per_row[2] == 10 - 6).all() and (per_row[8] == 22 - 10).all()  # cumulative rounding
    assert ((levels == 4).sum() == 0).item()
    plan = spbench.get_method("levels").plan(*(torch.randn(1, 2, 4096, 16) for _ in range(3)))
    assert plan.density == pytest.approx(0.15, abs=0.01)
    assert plan.stats["method"] == "levels"


def test_budget_maps_to_level_one_or_scales_the_mix():
    q = k = v = torch.randn(1, 2, 8192, 16)
    plan = spbench.get_method("levels", budget=0.25).plan(q, k, v)
    assert set(plan.level_fractions()) >= {"1"} and plan.level_fractions()["2"] == 0
    assert plan.density == pytest.approx(0.25, abs=0.01)
    plan = spbench.get_method("levels", budget=0.3, mix="1:0.1,4:0.2").plan(q, k, v)
    assert plan.density == pytest.approx(0.3, abs=0.01)
    fr = plan.level_fractions()
    assert fr["4"] == pytest.approx(2 * fr["1"], rel=0.05)


def test_seeded_and_spread():
    a = random_level_map(1, 2, 2048, 4096, 128, 64, {1: 0.2}, False, 1, "cpu")
    b = random_level_map(1, 2, 2048, 4096, 128, 64, {1: 0.2}, False, 1, "cpu")
    c = random_level_map(1, 2, 2048, 4096, 128, 64, {1: 0.2}, False, 2, "cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)
    # random: the chosen blocks are spread (different rows pick different blocks)
    assert (a > 0).any(dim=2).sum() > 40
    band = random_level_map(1, 2, 2048, 4096, 128, 64, {1: 0.2, 2: 0.1}, False, 1, "cpu", spread="band")
    active = (band > 0).long()
    # one circular run per row: exactly one 0->1 transition around the circle
    rises = ((active - active.roll(1, -1)) == 1).sum(-1)
    assert (rises == 1).all()


def test_causal_picks_visible_blocks_only():
    lq = lk = 1000
    levels = random_level_map(1, 2, lq, lk, 128, 64, {1: 0.3, 8: 0.3}, True, 0, "cpu")
    areas = block_areas(lq, lk, 128, 64, True)
    assert (levels[:, :, areas == 0] == 0).all()
    plan = spbench.get_method("levels", causal=True, mix="1:0.3,8:0.3").plan(*(torch.randn(1, 2, lq, 16) for _ in range(3)))
    assert plan.causal and 0.2 < plan.density < 0.5


def test_run_matches_reference():
    q, k, v = torch.randn(1, 2, 100, 16), torch.randn(1, 1, 120, 16), torch.randn(1, 1, 120, 16)
    for causal in (False, True):
        m = spbench.get_method("levels", mix="1:0.4,2:0.3,8:0.3", block_q=64, block_kv=32, causal=causal, seed=3)
        plan = m.plan(q, k, v)
        ref = pyramid_attention_reference(q, k, v, plan.to_levels(), 64, 32, causal)
        torch.testing.assert_close(m.run(q, k, v, plan), ref, atol=2e-5, rtol=0)


def test_knob_validation():
    with pytest.raises(SpbenchError):
        spbench.get_method("levels", block_kv=48)
    with pytest.raises(SpbenchError):
        spbench.get_method("levels", spread="diagonal")
