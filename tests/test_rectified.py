"""Rectified SpaAttn: formula check against a direct loop implementation, the
keep-everything limit, budget mapping on the video workload, the block-stats
kernel, neighbours, and knob errors."""

import importlib.util
import math

import pytest
import torch

import spbench
from spbench.errors import SpbenchError
from spbench.kernels.block_stats import block_stats_reference, block_stats_triton
from spbench.kernels.reference import exact_attention
from spbench.methods.rectified import Rectified, grid_neighbours
from spbench.workloads import make_qkv

HAS_PYRAMID_TRITON = importlib.util.find_spec("spbench.kernels.pyramid_triton") is not None


# ---------------------------------------------------------------- direct formula
def direct_rectified(q, k, v, block, p, keep, causal=False, text=0, grid=None):
    """Rectified SpaAttn written out per (batch, head, query block) from METHODS.md.

    ``keep``: share of each row's visible blocks in top_k; the per-row count is
    error-diffused: row i keeps floor(S_i + 1/2) - floor(S_{i-1} + 1/2) with S_i
    the running sum of keep * visible_i (at least 1).
    """
    q, k, v = q.double(), k.double(), v.double()
    bsz, hq, length, dim = q.shape
    group = hq // k.shape[1]
    scale = dim**-0.5
    nb = -(-length // block)
    vis_len = length - text
    out = torch.zeros(bsz, hq, length, v.shape[-1], dtype=torch.float64)
    starts = [j * block for j in range(nb)]
    ends = [min((j + 1) * block, length) for j in range(nb)]
    # neighbours by brute force over token pairs
    neigh = torch.zeros(nb, nb, dtype=torch.bool)
    if grid is not None:
        t_, h_, w_ = grid
        coords = [(n // (h_ * w_), (n // w_) % h_, n % w_) for n in range(vis_len)]
        for a in range(vis_len):
            for b in range(vis_len):
                if max(abs(coords[a][0] - coords[b][0]), abs(coords[a][1] - coords[b][1]), abs(coords[a][2] - coords[b][2])) <= 1:
                    neigh[a // block, b // block] = True
    # per-row top_k counts
    visible_counts = [sum(1 for j in range(nb) if not causal or starts[j] <= ends[i] - 1) for i in range(nb)]
    running, topk = 0.0, []
    for i in range(nb):
        before = math.floor(running + 0.5)
        running += keep * visible_counts[i]
        topk.append(max(1, math.floor(running + 0.5) - before))
    for b in range(bsz):
        for h in range(hq):
            hk = h // group
            for i in range(nb):
                rows = slice(starts[i], ends[i])
                qrows = q[b, h, rows]
                key_pos = torch.arange(length)
                if text > 0 and ends[i] > vis_len:  # text queries attend densely
                    s = qrows @ k[b, hk].T * scale
                    out[b, h, rows] = torch.softmax(s, -1) @ v[b, hk]
                    continue
                qm = qrows.mean(0)
                dq = (qrows - qm).abs().mean(0)
                mass, km, vm, dk, count = {}, {}, {}, {}, {}
                entries = []  # (block, logit)
                for j in range(nb):
                    if causal and starts[j] > ends[i] - 1:
                        continue
                    vis_end = min(ends[j], vis_len)
                    if vis_end > starts[j]:
                        kk = k[b, hk, starts[j] : vis_end]
                        km[j] = kk.mean(0)
                        dk[j] = (kk - km[j]).abs().mean(0)
                        vm[j] = v[b, hk, starts[j] : vis_end].mean(0)
                        count[j] = vis_end - starts[j]
                        entries.append((j, float(qm @ km[j]) * scale + math.log(count[j])))
                    for t in range(max(starts[j], vis_len), ends[j]):
                        entries.append((j, float(qm @ k[b, hk, t]) * scale))
                logits = torch.tensor([e[1] for e in entries], dtype=torch.float64)
                probs = torch.softmax(logits, 0)
                for (j, _), pr in zip(entries, probs):
                    mass[j] = mass.get(j, 0.0) + float(pr)
                blocks = sorted(mass)
                forced = {j for j in blocks if (text > 0 and ends[j] > vis_len) or neigh[i, j] or (causal and ends[j] - 1 > starts[i])}
                order = sorted(blocks, key=lambda j: (j not in forced, -mass[j]))
                cum, count_p = 0.0, 0
                for j in order:
                    cum += mass[j]
                    if cum <= p + 1e-6:
                        count_p += 1
                n = max(count_p if p > 0 else 0, topk[i], len(forced))
                critical = set(order[:n])
                compensated = []
                for j in blocks:
                    if j in critical or j not in km or ends[j] > vis_len:
                        continue
                    if causal and ends[j] - 1 > starts[i]:
                        continue
                    gain = abs(float(qm @ km[j]))
                    err = abs(float(dq @ km[j])) + abs(float(qm @ dk[j]))
                    if gain > err:
                        compensated.append(j)
                r = 1.0 - sum(mass[j] for j in compensated)
                keys = torch.cat([key_pos[starts[j] : ends[j]] for j in sorted(critical)])
                s = qrows @ k[b, hk, keys].T * scale
                if causal:
                    s = s.masked_fill(keys[None, :] > torch.arange(starts[i], ends[i])[:, None], float("-inf"))
                o = torch.softmax(s, -1) @ v[b, hk, keys]
                comp = sum((mass[j] * vm[j] for j in compensated), torch.zeros(v.shape[-1], dtype=torch.float64))
                out[b, h, rows] = r * o + comp
    return out


@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(p=0.6, drop_rate=0.9),
        dict(text=37),
        dict(text=64),
        dict(causal=True),
        dict(grid=(3, 8, 11)),
        dict(grid=(3, 8, 11), text=20),
    ],
    ids=["default", "p-rule", "text-ragged", "text-aligned", "causal", "grid", "grid+text"],
)
@pytest.mark.parametrize("executor", ["torch", "triton"])  # triton: the fused planner (kernels/rect_plan.py) where text_len == 0
def test_matches_direct_formula(case, executor):
    block, length = 32, 264 + case.get("text", 0)
    q, k, v = make_qkv("video", 1, 2, 1, length, 32, seed=3)
    knobs = dict(block=block, executor=executor, p=case.get("p", 0.3), drop_rate=case.get("drop_rate", 0.8))
    knobs.update(causal=case.get("causal", False), text_len=case.get("text", 0))
    if "grid" in case:
        knobs["grid"] = "x".join(map(str, case["grid"]))
    m = Rectified(**knobs)
    plan = m.plan(q, k, v)
    got = m.run(q, k, v, plan)
    want = direct_rectified(q, k, v, block, knobs["p"], 1 - knobs["drop_rate"], knobs["causal"], knobs["text_len"], case.get("grid"))
    assert torch.allclose(got.double(), want, atol=2e-5, rtol=1e-4), (got.double() - want).abs().max()
    # not vacuous: some blocks are left out, and the compensation path is exercised
    assert plan.stats["critical_fraction"] < 0.9
    if "grid" not in case:
        assert plan.stats["compensated_fraction"] > 0


@pytest.mark.parametrize("knobs", [dict(p=1.0), dict(drop_rate=0.0), dict(p=1.0, causal=True), dict(drop_rate=0.0, causal=True, block=64)])
@pytest.mark.parametrize("executor", ["torch", "triton"])
def test_keep_everything_is_dense(knobs, executor):
    q, k, v = make_qkv("random", 2, 4, 1, 200, 32, seed=1)
    m = Rectified(**{"block": 32, "executor": executor, **knobs})
    plan = m.plan(q, k, v)
    assert plan.density == pytest.approx(1.0)
    assert torch.allclose(plan.extras["row_scale"], torch.ones(()))
    assert torch.all(plan.extras["compensation"] == 0)
    want = exact_attention(q, k, v, causal=m.causal)
    assert torch.allclose(m.run(q, k, v, plan), want, atol=1e-5)


# ---------------------------------------------------------------- fused planner
@pytest.mark.parametrize(
    "knobs,shape,kind",
    [
        (dict(block=32), (1, 2, 1, 264, 32), "video"),
        (dict(block=32, p=0.6, drop_rate=0.9), (1, 2, 1, 264, 32), "video"),
        (dict(block=32, causal=True), (1, 2, 1, 264, 32), "video"),
        (dict(block=32, grid="3x8x11"), (1, 2, 1, 264, 32), "video"),
        (dict(block=64), (2, 4, 2, 300, 48), "random"),  # GQA, ragged tail, batch 2
        (dict(block=16, causal=True), (1, 4, 1, 200, 16), "random"),
        (dict(block=32, budget=0.1), (1, 2, 2, 1000, 64), "video"),
        (dict(block=128, causal=True, budget=0.2), (1, 2, 1, 1100, 128), "video"),
        (dict(block=256, budget=0.05), (1, 2, 1, 700, 64), "video"),  # two-pass pooling chunks
    ],
    ids=["default", "p-rule", "causal", "grid", "gqa-ragged", "b16-causal", "budget", "b128-causal-budget", "b256"],
)
def test_fused_planner_matches_torch_planner(knobs, shape, kind):
    """The fused Triton planner gives the torch planner's plan: same CSR, same epilogue terms, same stats."""
    bsz, hq, hkv, length, dim = shape
    q, k, v = make_qkv(kind, bsz, hq, hkv, length, dim, seed=3)
    ref_m = spbench.get_method("rectified", executor="torch", **knobs)
    fused_m = spbench.get_method("rectified", executor="triton", **knobs)
    assert fused_m._fused(q.device) and not ref_m._fused(q.device)
    want, got = ref_m.plan(q, k, v), fused_m.plan(q, k, v)
    assert torch.equal(got.kv_num_blocks, want.kv_num_blocks)
    assert torch.equal(got.kv_indices, want.kv_indices) and torch.equal(got.kv_levels, want.kv_levels)
    assert got.density == want.density
    assert torch.allclose(got.extras["row_scale"], want.extras["row_scale"], atol=1e-6)
    assert torch.allclose(got.extras["compensation"], want.extras["compensation"], atol=1e-6)
    for name in ("critical_fraction", "compensated_fraction", "dropped_fraction", "keep_fraction", "p", "compensation_flop_ratio"):
        assert got.stats[name] == pytest.approx(want.stats[name], abs=1e-12), name
    assert got.stats["mean_row_scale"] == pytest.approx(want.stats["mean_row_scale"], abs=1e-6)
    assert 0 < got.stats["compensated_fraction"] and got.stats["critical_fraction"] < 0.9  # not vacuous


@pytest.mark.parametrize("causal", [False, True])
def test_budget_lands_near_density_on_video(causal):
    q, k, v = make_qkv("video", 1, 4, 2, 8192, 64, seed=0)
    for budget in (0.05, 0.1, 0.2, 0.3, 0.5):
        plan = spbench.get_method("rectified", budget=budget, causal=causal, executor="torch").plan(q, k, v)
        assert abs(plan.density - budget) <= 0.2 * budget, (budget, plan.density)


def test_budget_keeps_explicit_native_knobs():
    m = Rectified(budget=0.1, drop_rate=0.5)
    assert m.keep_fraction() == 0.5 and m.mass_threshold() == 0.0
    m = Rectified(budget=0.1, p=0.4)
    assert m.keep_fraction() == 0.1 and m.mass_threshold() == 0.4
    m = Rectified()
    assert m.keep_fraction() == pytest.approx(0.2) and m.mass_threshold() == 0.3


def test_plan_stats_and_gqa_shapes():
    q, k, v = make_qkv("video", 2, 6, 2, 700, 32, seed=2)
    plan = Rectified(block=64, executor="torch").plan(q, k, v)
    assert plan.extras["row_scale"].shape == (2, 6, 11) and plan.extras["row_scale"].dtype == torch.float32
    assert plan.extras["compensation"].shape == (2, 6, 11, 32)
    fractions = plan.stats["critical_fraction"] + plan.stats["compensated_fraction"] + plan.stats["dropped_fraction"]
    assert fractions == pytest.approx(1.0)
    assert 0 < plan.stats["compensation_flop_ratio"] < 0.01
    assert torch.all(plan.extras["row_scale"] <= 1.0 + 1e-6)


@pytest.mark.skipif(not HAS_PYRAMID_TRITON, reason="kernels/pyramid_triton.py (the Triton executor) has not landed yet")
def test_triton_executor_path_matches_torch():
    q, k, v = make_qkv("video", 1, 4, 2, 300, 32, seed=5)
    torch_m = Rectified(block=64, executor="torch")
    plan = torch_m.plan(q, k, v)
    assert plan.extras["compensation"].abs().sum() > 0 and plan.extras["row_scale"].min() < 1  # the epilogue matters
    want = torch_m.run(q, k, v, plan)
    got = Rectified(block=64, executor="triton").run(q, k, v, plan)
    assert torch.allclose(got, want, atol=2e-4, rtol=1e-3)


# ---------------------------------------------------------------- block stats kernel
@pytest.mark.parametrize("block,length,dim", [(16, 50, 32), (32, 96, 48), (64, 130, 64), (128, 200, 128), (256, 300, 16), (256, 300, 128)])  # last: two-pass chunks
@pytest.mark.parametrize("with_mad", [True, False])
def test_block_stats_kernel_matches_reference(block, length, dim, with_mad):
    x = torch.randn(2, 3, length + 7, dim)[:, :, :length]  # strided view, ragged tail
    got = block_stats_triton(x, block, with_mad)
    want = block_stats_reference(x, block, with_mad)
    assert torch.allclose(got[0], want[0], atol=1e-5)
    assert torch.equal(got[2], want[2])
    if with_mad:
        assert torch.allclose(got[1], want[1], atol=1e-5)
    else:
        assert got[1] is None


def test_block_stats_reference_by_hand():
    x = torch.randn(1, 2, 70, 8)
    mean, mad, counts = block_stats_reference(x, 32)
    assert counts.tolist() == [32, 32, 6]
    tail = x[:, :, 64:]
    assert torch.allclose(mean[:, :, 2], tail.mean(2))
    assert torch.allclose(mad[:, :, 2], (tail - tail.mean(2, keepdim=True)).abs().mean(2))


def test_block_stats_bf16():
    x = torch.randn(1, 2, 200, 64).to(torch.bfloat16)
    got, want = block_stats_triton(x, 64), block_stats_reference(x, 64)
    assert torch.allclose(got[0], want[0], atol=1e-4) and torch.allclose(got[1], want[1], atol=1e-4)


# ---------------------------------------------------------------- neighbours
def test_grid_neighbours_match_brute_force():
    grid, block, tokens = (3, 5, 7), 16, 100  # last frame partly filled
    nb = -(-tokens // block)
    got = grid_neighbours(grid, tokens, block, nb, nb, "cpu")
    want = torch.zeros(nb, nb, dtype=torch.bool)
    cells = [(n // 35, (n // 7) % 5, n % 7) for n in range(tokens)]
    for a, ca in enumerate(cells):
        for b, cb in enumerate(cells):
            if max(abs(x - y) for x, y in zip(ca, cb)) <= 1:
                want[a // block, b // block] = True
    assert torch.equal(got, want)


# ---------------------------------------------------------------- knob errors
@pytest.mark.parametrize(
    "knobs,match",
    [
        (dict(p=-0.1), "p must be"),
        (dict(p=1.5), "p must be"),
        (dict(drop_rate=1.0), "drop_rate"),
        (dict(block=100), "power of two"),
        (dict(text_len=-1), "text_len"),
        (dict(text_len=16, causal=True), "causal"),
        (dict(grid="4x4"), "grid"),
        (dict(executor="cuda"), "executor"),
        (dict(budget=0.0), "budget"),
    ],
)
def test_bad_knobs(knobs, match):
    with pytest.raises(SpbenchError, match=match):
        spbench.get_method("rectified", **knobs)


def test_bad_inputs_at_plan_time():
    q, k, v = make_qkv("random", 1, 2, 2, 128, 16)
    with pytest.raises(SpbenchError, match="cells"):
        Rectified(grid="2x4x4", executor="torch").plan(q, k, v)
    with pytest.raises(SpbenchError, match="smaller than the sequence"):
        Rectified(text_len=128, executor="torch").plan(q, k, v)
    with pytest.raises(SpbenchError, match="self-attention"):
        Rectified(text_len=8, executor="torch").plan(q, k[:, :, :64], v[:, :, :64])
