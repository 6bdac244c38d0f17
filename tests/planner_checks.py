"""Checks shared by the planner tests (block, xattention, psa)."""

from __future__ import annotations

import functools

import pytest
import torch

from spbench.kernels.reference import exact_attention, pyramid_attention_reference
from spbench.methods import _select as sel
from spbench.plan import Plan, block_areas, density_of_levels
from spbench.workloads import make_qkv

# Planner tests run the PyTorch reference executor: the Triton executor has
# its own tests, and the interpreter is too slow for these sequence lengths.
EXECUTOR = "torch"
BUDGETS = (0.05, 0.1, 0.2, 0.35, 0.5)


@functools.lru_cache(maxsize=4)
def video(seq: int, heads: int = 2, kv_heads: int = 1, head_dim: int = 64, seed: int = 0):
    return make_qkv("video", 1, heads, kv_heads, seq, head_dim, seed=seed)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def check_plan(plan: Plan, q, k, allowed=(0, 1), forced: torch.Tensor | None = None, forced_level: int | None = None) -> torch.Tensor:
    """Levels in ``allowed``, nothing invisible, forced blocks present, density as reported."""
    levels = plan.to_levels()
    lq, lk = q.shape[2], k.shape[2]
    assert levels.shape == (q.shape[0], q.shape[1], plan.num_q_blocks, plan.num_kv_blocks)
    assert set(levels.unique().tolist()) <= set(allowed)
    visible = block_areas(lq, lk, plan.block_q, plan.block_kv, plan.causal) > 0
    assert not (levels[..., ~visible] > 0).any(), "an invisible block was selected"
    assert (levels.max(-1).values > 0).all(), "a query block kept nothing"
    if forced is not None:
        picked = levels[..., forced]
        assert (picked > 0).all(), "a forced block is missing"
        if forced_level is not None:
            assert (picked == forced_level).all()
    assert plan.density == pytest.approx(density_of_levels(levels, lq, lk, plan.block_q, plan.block_kv, plan.causal))
    return levels


def budget_sweep_density(make_method, seq: int = 8192):
    """Measured density for every budget in BUDGETS on the video workload."""
    q, k, v = video(seq)
    return {b: make_method(b).plan(q, k, v).density for b in BUDGETS}


def error_by_budget(make_method, budgets=(0.05, 0.1, 0.2, 0.5, 1.0), seq: int = 2048, every: int = 4):
    """Relative L2 error vs exact attention for each budget on the (bidirectional) video workload.

    Like the benchmark, quality is measured on sampled query rows: every
    ``every``-th query block, run through the reference executor with that
    block's row of the plan (exact for non-causal plans, where a query
    block's output depends only on its own row of the level map).
    """
    q, k, v = video(seq)
    errors = []
    for budget in budgets:
        m = make_method(budget)
        plan = m.plan(q, k, v)
        assert not plan.causal
        picked = torch.arange(0, plan.num_q_blocks, every)
        rows = (picked[:, None] * plan.block_q + torch.arange(plan.block_q)[None, :]).flatten()
        rows = rows[rows < seq]
        levels = plan.to_levels()[:, :, picked]
        out = pyramid_attention_reference(q[:, :, rows], k, v, levels, plan.block_q, plan.block_kv, False, m.params["scale"])
        errors.append(rel_err(out, exact_attention(q, k, v, rows=rows)))
    return errors


def assert_error_falls(errors):
    """Non-increasing with the budget, clearly lower at the second-largest budget, exact at budget 1."""
    assert all(b <= a + 1e-4 for a, b in zip(errors, errors[1:])), errors
    assert errors[-2] < 0.6 * errors[0], errors
    assert errors[-1] < 1e-4, errors


def forced_mask(q, k, block_q, block_kv, causal, diagonal, sink):
    return sel.forced_blocks(q.shape[2], k.shape[2], block_q, block_kv, causal, diagonal, sink)
