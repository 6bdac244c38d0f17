"""psa: sampled importance (Triton vs reference vs brute force), level assignment, similarity cap, budgets."""

import math

import pytest
import torch

import spbench
from planner_checks import EXECUTOR, assert_error_falls, budget_sweep_density, check_plan, error_by_budget, forced_mask, video
from spbench.errors import SpbenchError
from spbench.kernels.psa_score import psa_importance, psa_importance_reference, sample_offsets, sampled_positions
from spbench.kernels.reference import exact_attention
from spbench.methods.psa import PSA, adjacent_key_similarity, similarity_cap
from spbench.plan import block_areas

ALL_LEVELS = (0, 1, 2, 4, 8)


# ---------------------------------------------------------------- importance
def brute_importance(q, k, q_off, k_off, bq, bk, causal):
    """The formula, one (query block, KV block) at a time."""
    bsz, hq, lq, d = q.shape
    lk, group = k.shape[2], hq // k.shape[1]
    nq, nk = math.ceil(lq / bq), math.ceil(lk / bk)
    out = torch.zeros(bsz, hq, nq, nk, dtype=torch.float64)
    for b in range(bsz):
        for h in range(hq):
            qpos = [[i * bq + int(o) % min(bq, lq - i * bq) for o in q_off[h]] for i in range(nq)]
            kpos = [[j * bk + int(o) % min(bk, lk - j * bk) for o in k_off[h]] for j in range(nk)]
            all_k = [p for blk in kpos for p in blk]
            for i in range(nq):
                for j in range(nk):
                    best = 0.0
                    for t in qpos[i]:
                        seen = [u for u in all_k if not causal or u <= t]
                        if not seen:
                            continue
                        logit = {u: float(q[b, h, t].double() @ k[b, h // group, u].double()) * d**-0.5 for u in seen}
                        m_all = max(logit.values())
                        mine = [logit[u] for u in kpos[j] if not causal or u <= t]
                        if mine:
                            best = max(best, math.exp(max(mine) - m_all))
                    out[b, h, i, j] = best
            total = out[b, h].sum(-1, keepdim=True)
            out[b, h] = torch.where(total > 0, out[b, h] / total, out[b, h])
    return out


def test_sample_offsets_are_seeded_sorted_distinct():
    a = sample_offsets(3, 128, 32, seed=5, salt=1)
    assert a.shape == (3, 32) and a.dtype == torch.int32
    assert torch.equal(a, sample_offsets(3, 128, 32, seed=5, salt=1))
    assert not torch.equal(a, sample_offsets(3, 128, 32, seed=6, salt=1))
    for row in a:
        assert row.tolist() == sorted(set(row.tolist())) and 0 <= int(row.min()) and int(row.max()) < 128
    pos = sampled_positions(a, 300, 128)  # shared by every block of a head; the tail wraps
    assert torch.equal(pos[:, 1] - 128, pos[:, 0])
    assert (pos[:, 2] >= 256).all() and (pos[:, 2] < 300).all()


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_formula(causal):
    q, k = torch.randn(1, 2, 45, 16), torch.randn(1, 1, 37, 16)
    q_off, k_off = sample_offsets(2, 16, 4, 0, 1), sample_offsets(2, 8, 2, 0, 2)
    got = psa_importance_reference(q, k, q_off, k_off, 16, 8, causal)
    torch.testing.assert_close(got.double(), brute_importance(q, k, q_off, k_off, 16, 8, causal), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "lq,lk,hq,hkv,d,bq,bk,causal,dtype",
    [
        (1000, 1000, 2, 1, 64, 128, 64, False, torch.float32),
        (777, 777, 4, 2, 64, 128, 64, True, torch.float32),
        (600, 600, 2, 1, 128, 128, 128, True, torch.bfloat16),
        (517, 517, 2, 2, 128, 64, 32, False, torch.float16),
        (300, 300, 2, 1, 64, 32, 32, True, torch.float32),
        (333, 450, 2, 2, 64, 128, 64, True, torch.float32),
    ],
)
def test_triton_matches_reference(lq, lk, hq, hkv, d, bq, bk, causal, dtype):
    q, k = (torch.randn(1, hq, lq, d) * 1.5).to(dtype), (torch.randn(1, hkv, lk, d) * 1.5).to(dtype)
    q_off, k_off = sample_offsets(hq, bq, bq // 4, 3, 1), sample_offsets(hq, bk, bk // 4, 3, 2)
    got = psa_importance(q, k, q_off, k_off, bq, bk, causal)
    want = psa_importance_reference(q, k, q_off, k_off, bq, bk, causal)
    torch.testing.assert_close(got, want, atol=1e-5 if dtype == torch.float32 else 2e-3, rtol=0)


def test_triton_head_chunks():
    q, k = torch.randn(2, 2, 400, 64), torch.randn(2, 1, 400, 64)
    q_off, k_off = sample_offsets(2, 128, 32, 0, 1), sample_offsets(2, 64, 16, 0, 2)
    want = psa_importance_reference(q, k, q_off, k_off, 128, 64, False, scale=0.3)
    got = psa_importance(q, k, q_off, k_off, 128, 64, False, scale=0.3, max_scratch_bytes=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_triton_gpu_tile_sizes():
    # the 128 x 128 sampled tiles the GPU uses, run through the interpreter once
    q, k = torch.randn(1, 2, 1100, 64), torch.randn(1, 1, 1100, 64)
    q_off, k_off = sample_offsets(2, 128, 32, 1, 1), sample_offsets(2, 64, 16, 1, 2)
    got = psa_importance(q, k, q_off, k_off, 128, 64, True, tile=128)
    torch.testing.assert_close(got, psa_importance_reference(q, k, q_off, k_off, 128, 64, True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("interleave", [1, 2, 4, 8])
def test_triton_key_interleave(interleave):
    # sample-major gathered keys, any group size: causal + GQA + a KV block count (700 / 32 -> 22)
    # that is no multiple of the group, so the last group holds zero-padded blocks
    q, k = torch.randn(1, 4, 650, 64), torch.randn(1, 2, 700, 64)
    q_off, k_off = sample_offsets(4, 128, 32, 5, 1), sample_offsets(4, 32, 8, 5, 2)
    for causal in (True, False):
        got = psa_importance(q, k, q_off, k_off, 128, 32, causal, interleave=interleave)
        torch.testing.assert_close(got, psa_importance_reference(q, k, q_off, k_off, 128, 32, causal), atol=1e-5, rtol=0)


def test_triton_wide_tiles_of_small_blocks():
    # 256-wide tiles of 8-sample blocks: 32 KV blocks per tile but only 10 in the sequence, so the
    # scratch rows must hold a whole tile (the padding blocks are written)
    q, k = torch.randn(1, 2, 300, 64), torch.randn(1, 1, 300, 64)
    q_off, k_off = sample_offsets(2, 128, 32, 6, 1), sample_offsets(2, 32, 8, 6, 2)
    cfg = dict(BLOCK_M=64, BLOCK_N=256, num_warps=4, num_stages=1, TMA=0)
    for causal in (True, False):
        got = psa_importance(q, k, q_off, k_off, 128, 32, causal, config=cfg)
        torch.testing.assert_close(got, psa_importance_reference(q, k, q_off, k_off, 128, 32, causal), atol=1e-5, rtol=0)


def test_key_interleave_rules():
    from spbench.kernels.psa_score import key_interleave

    assert key_interleave(16, [dict(BLOCK_N=128), dict(BLOCK_N=256)]) == 8
    assert key_interleave(16, [dict(BLOCK_N=64)]) == 4  # the interpreter's tile
    assert key_interleave(64, [dict(BLOCK_N=64)]) == 1
    q, k = torch.randn(1, 1, 256, 64), torch.randn(1, 1, 256, 64)
    q_off, k_off = sample_offsets(1, 128, 32, 0, 1), sample_offsets(1, 64, 16, 0, 2)
    for bad in (3, 8):  # not a power of two; 8 x 16 samples do not divide the 64-wide tile
        with pytest.raises(ValueError, match="interleave"):
            psa_importance(q, k, q_off, k_off, interleave=bad)


@pytest.mark.parametrize("fp8", [False, True])
def test_kernel_compiles_for_h100_without_spills(fp8):
    from sm90_compile import sm90_resources

    from spbench.kernels.psa_score import gpu_candidates, key_interleave

    configs = []
    elem = "fp8e4nv" if fp8 else "bf16"
    for d, bq, bk, causal in ((128, 128, 64, False), (128, 128, 64, True), (64, 64, 32, True)):
        sq, sk = bq // 4, bk // 4
        group = key_interleave(sk, [dict(BLOCK_N=max(c[1], sk)) for c in gpu_candidates(d, fp8)])
        assert group == 8  # the sample-major layout whose per-block max needs no shuffles
        for bm, bn, warps, stages, *tma in gpu_candidates(d, fp8):  # every candidate the GPU autotune may pick
            bn = max(bn, sk)
            consts = dict(BQ=bq, BKV=bk, SQ=sq, SK=sk, D=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, DOT_F32=False, TMA=tma[0] if tma else 0, FP8=2 if fp8 else 0, G=group)
            descs = {"QD": f"tensordesc<{elem}[{bm}, {d}]>", "KD": f"tensordesc<{elem}[{bn}, {d}]>"} if tma else {"QD": f"*{elem}", "KD": f"*{elem}"}
            descs.update(QS=f"*{elem}", KS=f"*{elem}")
            configs.append({"constexprs": consts, "options": {"num_warps": warps, "num_stages": stages}, "pointers": descs})
    results = sm90_resources(
        "spbench.kernels.psa_score", "_sampled_rowmax", configs,
        {"QPOS": "*i32", "KPOS": "*i32", "RMAX": "*fp32", "MAXALL": "*fp32", "QSC": "*fp32", "KSC": "*fp32"},
        div16=("n_rows", "n_rows_pad", "n_cols_pad", "ld"), floats=("qk_scale",),
    )
    for cfg, res in zip(configs, results):
        assert res["STACK"] == 0 and res["pipelined"], (cfg, res)
        # per-block maxima stay in registers: the only butterfly shuffles left are the
        # row max over the [BLOCK_M, KB] slots after the loop (block-major keys: 32-64)
        assert res["shfl_bfly"] <= 8, (cfg, res)
        assert res["SHARED"] <= 232448, (cfg, res)  # sm_90's shared memory per block (227 KB)


@pytest.mark.parametrize("cfg", [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=1, TMA=tma[0] if tma else 0) for bm, bn, w, _, *tma in
                                 __import__("spbench.kernels.psa_score", fromlist=["GPU_CONFIGS"]).GPU_CONFIGS[128]])
def test_triton_every_gpu_config(cfg):
    # every autotune candidate computes the same scores (interpreter, causal + GQA + ragged tail)
    q, k = torch.randn(1, 2, 700, 64), torch.randn(1, 1, 700, 64)
    q_off, k_off = sample_offsets(2, 128, 32, 4, 1), sample_offsets(2, 64, 16, 4, 2)
    for causal in (True, False):
        got = psa_importance(q, k, q_off, k_off, 128, 64, causal, config=cfg)
        torch.testing.assert_close(got, psa_importance_reference(q, k, q_off, k_off, 128, 64, causal), atol=1e-5, rtol=0)


def test_plan_with_triton_scorer_equals_torch_scorer():
    q, k, v = torch.randn(1, 2, 640, 64), torch.randn(1, 1, 640, 64), torch.randn(1, 1, 640, 64)
    a = PSA(scorer="triton").plan(q, k, v).to_levels()
    b = PSA(scorer="torch").plan(q, k, v).to_levels()
    assert torch.equal(a, b)


# ---------------------------------------------------------------- levels
def brute_threshold_levels(scores, visible, forced, ths, min1):
    bsz, hq, nq, nk = scores.shape
    out = torch.zeros(bsz, hq, nq, nk, dtype=torch.int8)
    for b in range(bsz):
        for h in range(hq):
            for i in range(nq):
                vis = [j for j in range(nk) if visible[i, j]]
                first = [j for j in vis if forced[i, j]]
                rest = sorted((j for j in vis if not forced[i, j]), key=lambda j: -float(scores[b, h, i, j]))
                total = sum(float(scores[b, h, i, j]) for j in vis)
                n_min = max(math.ceil(min1 * len(vis)), len(first))
                acc = 0.0
                for r, j in enumerate(first + rest):
                    share = acc / total
                    level = next((p for p, t in zip((1, 2, 4, 8), ths) if share < t), 0)
                    out[b, h, i, j] = 1 if r < n_min else level
                    acc += float(scores[b, h, i, j])
    return out


@pytest.mark.parametrize("variant", ["generation", "understanding"])
@pytest.mark.parametrize("causal", [False, True])
def test_threshold_levels_match_brute_force(variant, causal):
    q, k, v = torch.randn(1, 2, 1100, 64), torch.randn(1, 1, 1100, 64), torch.randn(1, 1, 1100, 64)
    m = PSA(variant=variant, causal=causal, min_level1=0.1)
    nq, nk = 9, 18
    visible = block_areas(1100, 1100, 128, 64, causal) > 0
    g = torch.Generator().manual_seed(4)
    scores = (torch.rand(1, 2, nq, nk, generator=g) ** 4).masked_fill(~visible, 0)
    scores = scores / scores.sum(-1, keepdim=True)
    m.importance = lambda q, k: scores  # plan from known importances
    forced = forced_mask(q, k, 128, 64, causal, variant == "understanding" or causal, variant == "understanding")
    plan = m.plan(q, k, v)
    levels = check_plan(plan, q, k, ALL_LEVELS, forced=forced, forced_level=1)
    want = brute_threshold_levels(scores, visible, forced, m.thresholds, 0.1)
    assert torch.equal(levels, want)
    defaults = (0.4, 0.5, 0.6, 0.8) if variant == "generation" else (0.7, 0.8, 0.9, 0.9)
    assert m.thresholds == defaults


def test_topk_mode_fractions():
    q, k, v = video(4096)
    plan = PSA(mode="topk", scorer="torch").plan(q, k, v)
    check_plan(plan, q, k, ALL_LEVELS)
    frac = plan.level_fractions()
    for level, want in (("1", 0.10), ("2", 0.05), ("4", 0.0), ("8", 0.20)):
        assert frac[level] == pytest.approx(want, abs=0.005)
    assert plan.density == pytest.approx(0.15, abs=0.005)
    # the best-ranked blocks get the finest levels
    m = PSA(mode="topk", scorer="torch")
    scores = m.importance(q, k)
    levels = plan.to_levels()
    for finer, coarser in ((1, 2), (2, 8), (8, 0)):  # per query block
        worst_finer = scores.masked_fill(levels != finer, 2.0).amin(-1)
        best_coarser = scores.masked_fill(levels != coarser, -1.0).amax(-1)
        assert (worst_finer >= best_coarser - 1e-7).all()


# ---------------------------------------------------------------- similarity cap
def brute_similarity(k, bk):
    bsz, hkv, lk, d = k.shape
    nk = math.ceil(lk / bk)
    out = torch.zeros(bsz, hkv, nk, 3, dtype=torch.float64)
    for b in range(bsz):
        for h in range(hkv):
            for j in range(nk):
                keys = k[b, h, j * bk : (j + 1) * bk].double()
                for idx, p in enumerate((2, 4, 8)):
                    half = p // 2
                    cos = []
                    for g0 in range(0, bk, p):
                        left, right = keys[g0 : g0 + half], keys[g0 + half : g0 + p]
                        if len(left) and len(right):
                            cos.append(float(torch.nn.functional.cosine_similarity(left.mean(0), right.mean(0), dim=0)))
                    out[b, h, j, idx] = sum(cos) / len(cos) if cos else 1.0
    return out


def test_adjacent_similarity_matches_loops():
    k = torch.randn(2, 2, 150, 16) + torch.linspace(0, 3, 150)[:, None]
    got = adjacent_key_similarity(k, 32, max_bytes=1)  # one head per chunk
    torch.testing.assert_close(got.double(), brute_similarity(k, 32), atol=1e-5, rtol=0)


def test_similarity_cap_limits_levels():
    sim = torch.tensor([[0.9, 0.9, 0.9], [0.9, 0.6, 0.9], [0.5, 0.9, 0.9], [0.71, 0.66, 0.5]])
    assert similarity_cap(sim, (0.7, 0.65, 0.6)).tolist() == [8, 2, 1, 4]
    q, k, v = video(2048)
    free = PSA(scorer="torch", mode="topk").plan(q, k, v)
    capped_method = PSA(scorer="torch", mode="topk", sim_cap=True, sim2=0.95, sim4=0.9, sim8=0.9)
    capped = capped_method.plan(q, k, v)
    cap = similarity_cap(adjacent_key_similarity(k, 64), capped_method.sim_thresholds)[:, :, None, :]
    a, b = free.to_levels(), capped.to_levels()
    assert torch.equal(b, torch.minimum(a, cap.expand_as(a)))
    assert capped.density >= free.density and not torch.equal(a, b)


# ---------------------------------------------------------------- budgets and dense
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", ["generation", "understanding"])
def test_budget_one_equals_dense(causal, variant):
    q, k, v = torch.randn(1, 4, 400, 64), torch.randn(1, 2, 400, 64), torch.randn(1, 2, 400, 64)
    m = spbench.get_method("pyramid", budget=1.0, causal=causal, variant=variant, executor=EXECUTOR, scorer="torch")
    plan = m.plan(q, k, v)
    assert plan.density == pytest.approx(1.0)
    torch.testing.assert_close(m.run(q, k, v, plan).float(), exact_attention(q, k, v, causal=causal), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["generation", "understanding"])
def test_budget_maps_to_density_on_video(variant):
    density = budget_sweep_density(lambda b: PSA(budget=b, variant=variant, scorer="torch", executor=EXECUTOR))
    for budget, got in density.items():
        assert abs(got - budget) <= 0.2 * budget, (budget, got)


def test_budget_plans_are_valid_causal():
    q, k, v = video(4096)
    for budget in (0.1, 0.3):
        plan = PSA(budget=budget, causal=True, variant="understanding", scorer="torch").plan(q, k, v)
        check_plan(plan, q, k, ALL_LEVELS, forced=forced_mask(q, k, 128, 64, True, True, True), forced_level=1)
        assert abs(plan.density - budget) <= 0.2 * budget


def test_error_falls_with_budget_on_video():
    assert_error_falls(error_by_budget(lambda b: PSA(budget=b, scorer="torch", executor=EXECUTOR)))


# ---------------------------------------------------------------- knobs
@pytest.mark.parametrize(
    "knobs,match",
    [
        (dict(th1=0.6, th2=0.5), "non-decreasing"),
        (dict(th1=-0.1), "th1"),
        (dict(th8=1.5), "th8"),
        (dict(topk1=0.5, topk2=0.3, topk8=0.3), "must not exceed 1"),
        (dict(topk4=-0.1), "topk4"),
        (dict(topk1=0.0, budget=0.2), "topk1 must be positive"),
        (dict(sim2=1.5), "sim2"),
        (dict(q_samples=24), "power of two"),
        (dict(k_samples=128), "k_samples"),
        (dict(variant="video"), "variant"),
        (dict(variant="understanding", stride=48), "stride"),
        (dict(sim_cap=True, block_kv=36), "multiple of 8"),
        (dict(th1="abc"), "th1"),
        (dict(min_level1=2.0), "min_level1"),
    ],
)
def test_bad_knobs(knobs, match):
    with pytest.raises(SpbenchError, match=match):
        spbench.get_method("psa", **knobs)
