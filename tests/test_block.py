"""The block method: mean-pooled block scores, topk / cdf / budget selection."""

import importlib.util
import math

import pytest
import torch

import spbench
from planner_checks import EXECUTOR, assert_error_falls, budget_sweep_density, check_plan, error_by_budget, forced_mask, rel_err
from spbench.errors import SpbenchError
from spbench.kernels.reference import exact_attention
from spbench.methods.block import BlockSparse


def brute_block_scores(q, k, bq, bk, causal, scale=None):
    """Loop-built block means, logits, masked softmax."""
    bsz, hq, lq, d = q.shape
    group = hq // k.shape[1]
    nq, nk = math.ceil(lq / bq), math.ceil(k.shape[2] / bk)
    scale = d**-0.5 if scale is None else scale
    out = torch.zeros(bsz, hq, nq, nk, dtype=torch.float64)
    for b in range(bsz):
        for h in range(hq):
            qm = [q[b, h, i * bq : (i + 1) * bq].double().mean(0) for i in range(nq)]
            km = [k[b, h // group, j * bk : (j + 1) * bk].double().mean(0) for j in range(nk)]
            for i in range(nq):
                logits = torch.tensor([float(qm[i] @ km[j]) * scale for j in range(nk)], dtype=torch.float64)
                if causal:
                    visible = torch.tensor([j * bk <= min(lq, (i + 1) * bq) - 1 for j in range(nk)])
                    logits = logits.masked_fill(~visible, float("-inf"))
                out[b, h, i] = torch.softmax(logits, 0)
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_block_scores_match_brute_force(causal):
    q, k = torch.randn(1, 4, 300, 64), torch.randn(1, 2, 300, 64)
    m = BlockSparse(causal=causal)
    vis = torch.ones(3, 5, dtype=torch.bool) if not causal else (torch.arange(5)[None, :] * 64 <= torch.tensor([127, 255, 299])[:, None])
    torch.testing.assert_close(m.block_scores(q, k, vis).double(), brute_block_scores(q, k, 128, 64, causal), atol=1e-5, rtol=0)


def test_smooth_k_leaves_scores_unchanged():
    # q_mean . (k_mean_j - k_bar) shifts every logit of a row equally: the softmax is invariant.
    q, k = torch.randn(1, 2, 512, 64), torch.randn(1, 2, 512, 64) + 3.0
    vis = torch.ones(4, 8, dtype=torch.bool)
    plain = BlockSparse().block_scores(q, k, vis)
    smooth = BlockSparse(smooth_k=True).block_scores(q, k, vis)
    torch.testing.assert_close(plain, smooth, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq,hq,hkv", [(512, 2, 2), (333, 4, 2)])
def test_budget_one_equals_dense(causal, lq, hq, hkv):
    q, k, v = torch.randn(1, hq, lq, 64), torch.randn(1, hkv, lq, 64), torch.randn(1, hkv, lq, 64)
    m = spbench.get_method("block", budget=1.0, causal=causal, executor=EXECUTOR)
    plan = m.plan(q, k, v)
    assert plan.density == pytest.approx(1.0)
    torch.testing.assert_close(m.run(q, k, v, plan).float(), exact_attention(q, k, v, causal=causal), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", ["topk", "cdf"])
@pytest.mark.parametrize("sink", [False, True])
def test_plans_are_valid(causal, mode, sink):
    q, k, v = torch.randn(1, 4, 1000, 64), torch.randn(1, 2, 1000, 64), torch.randn(1, 2, 1000, 64)
    m = BlockSparse(mode=mode, causal=causal, sink=sink, topk=0.3, tau=0.8)
    plan = m.plan(q, k, v)
    forced = forced_mask(q, k, 128, 64, causal, True, sink)
    levels = check_plan(plan, q, k, forced=forced)
    visible = plan_visible = torch.ones_like(forced)
    if causal:
        visible = plan_visible = (torch.arange(16)[None, :] * 64 <= torch.clamp(torch.arange(8)[:, None] * 128 + 127, max=999))
    n_visible = plan_visible.sum(-1)
    kept = (levels > 0).sum(-1)
    if mode == "topk":
        want = torch.maximum(torch.round(0.3 * n_visible.double()).long(), forced.sum(-1).clamp(min=1))
        assert torch.equal(kept, want.expand_as(kept))
    else:  # smallest prefix reaching tau: kept mass >= tau, and minimal beyond the forced blocks
        scores = m.block_scores(q, k, visible)
        mass = (scores * (levels > 0)).sum(-1)
        assert (mass >= 0.8 - 1e-5).all()
        dropped_best = scores.masked_fill((levels > 0) | ~visible, -1).amax(-1)
        lightest_optional = scores.masked_fill((levels == 0) | forced, 2).amin(-1)
        assert (dropped_best <= lightest_optional + 1e-6).all(), "kept blocks must outrank dropped ones"
        assert ((mass - lightest_optional < 0.8 + 1e-5) | (lightest_optional == 2)).all(), "not minimal"


def test_budget_maps_to_density_on_video():
    density = budget_sweep_density(lambda b: BlockSparse(budget=b, executor=EXECUTOR))
    for budget, got in density.items():
        assert abs(got - budget) <= 0.2 * budget, (budget, got)


def test_error_falls_with_budget_on_video():
    assert_error_falls(error_by_budget(lambda b: BlockSparse(budget=b, executor=EXECUTOR)))


def test_native_knobs_without_budget():
    q, k, v = torch.randn(1, 2, 1024, 64), torch.randn(1, 2, 1024, 64), torch.randn(1, 2, 1024, 64)
    low = spbench.get_method("block", mode="cdf", tau=0.5).plan(q, k, v).density
    high = spbench.get_method("block", mode="cdf", tau=0.95).plan(q, k, v).density
    assert low < high
    assert spbench.get_method("block-sparse", topk=0.5).plan(q, k, v).density == pytest.approx(0.5)


@pytest.mark.skipif(importlib.util.find_spec("spbench.kernels.pyramid_triton") is None, reason="Triton executor not present")
def test_runs_on_the_triton_executor():
    q, k, v = torch.randn(1, 2, 256, 64), torch.randn(1, 1, 256, 64), torch.randn(1, 1, 256, 64)
    m = spbench.get_method("block", budget=0.5, causal=True)
    plan = m.plan(q, k, v)
    ref = BlockSparse(budget=0.5, causal=True, executor="torch").run(q, k, v, plan)
    assert rel_err(m.run(q, k, v, plan), ref) < 1e-4


@pytest.mark.parametrize(
    "knobs,match",
    [
        (dict(topk=0.0), "topk"),
        (dict(topk=1.5), "topk"),
        (dict(tau=-0.1), "tau"),
        (dict(mode="bogus"), "mode"),
        (dict(block_q=0), "block_q"),
        (dict(executor="gpu"), "executor"),
        (dict(budget=0.0), "budget"),
        (dict(tua=0.9), "did you mean tau"),
    ],
)
def test_bad_knobs(knobs, match):
    with pytest.raises(SpbenchError, match=match):
        spbench.get_method("block", **knobs)


def test_bad_head_dim():
    q = torch.randn(1, 1, 128, 32)
    with pytest.raises(SpbenchError, match="head dims"):
        BlockSparse().plan(q, q, q)
