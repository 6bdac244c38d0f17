"""xattention: antidiagonal scoring (Triton vs reference vs brute force) and the planner."""

import math

import pytest
import torch

import spbench
from planner_checks import EXECUTOR, assert_error_falls, budget_sweep_density, check_plan, error_by_budget, forced_mask, video
from spbench.errors import SpbenchError
from spbench.kernels.antidiag import antidiagonal_scores, antidiagonal_scores_reference
from spbench.kernels.reference import exact_attention
from spbench.methods.xattention import XAttention


def brute_antidiagonal(q, k, stride, bq, bk, causal, scale=None):
    """Straight from the definition: antidiagonal sums of every S x S tile of the full Q K^T."""
    bsz, hq, lq, d = q.shape
    lk = k.shape[2]
    group = hq // k.shape[1]
    scale = d**-0.5 if scale is None else scale
    rows, cols = math.ceil(lq / stride), math.ceil(lk / stride)
    nq, nk = math.ceil(lq / bq), math.ceil(lk / bk)
    out = torch.zeros(bsz, hq, nq, nk, dtype=torch.float64)
    for b in range(bsz):
        for h in range(hq):
            s = q[b, h].double() @ k[b, h // group].double().T
            tile = torch.zeros(rows, cols, dtype=torch.float64)
            for r in range(rows):
                for c in range(cols):
                    for i in range(stride):
                        t, u = r * stride + stride - 1 - i, c * stride + i
                        if t < lq and u < lk:
                            tile[r, c] += s[t, u]
            logits = tile * scale / stride
            if causal:
                logits = logits.masked_fill(torch.arange(cols)[None, :] > torch.arange(rows)[:, None], float("-inf"))
            p = torch.softmax(logits, -1)
            for i in range(nq):
                r0, r1 = i * bq // stride, min(rows, (i + 1) * bq // stride)
                for j in range(nk):
                    out[b, h, i, j] = p[r0:r1, j * bk // stride : (j + 1) * bk // stride].sum() / (r1 - r0)
    return out


@pytest.mark.parametrize(
    "lq,lk,stride,bq,bk,causal",
    [(64, 64, 4, 16, 16, False), (70, 70, 4, 16, 32, True), (61, 45, 8, 16, 8, False), (50, 50, 2, 8, 8, True)],
)
def test_reference_matches_definition(lq, lk, stride, bq, bk, causal):
    q, k = torch.randn(1, 2, lq, 16), torch.randn(1, 1, lk, 16)
    got = antidiagonal_scores_reference(q, k, stride, bq, bk, causal, chunk_blocks=2)
    torch.testing.assert_close(got.double(), brute_antidiagonal(q, k, stride, bq, bk, causal), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "lq,hq,hkv,d,stride,bq,bk,causal,dtype",
    [
        (640, 2, 2, 64, 8, 128, 128, False, torch.float32),
        (777, 4, 2, 64, 8, 128, 128, True, torch.float32),
        (520, 2, 1, 128, 16, 128, 64, True, torch.float32),
        (450, 2, 2, 128, 8, 64, 128, False, torch.float16),
        (389, 2, 1, 64, 4, 32, 32, True, torch.bfloat16),
        (300, 1, 1, 64, 16, 128, 128, False, torch.float32),
    ],
)
def test_triton_matches_reference(lq, hq, hkv, d, stride, bq, bk, causal, dtype):
    q = (torch.randn(1, hq, lq, d) * 1.5).to(dtype)
    k = (torch.randn(1, hkv, lq, d) * 1.5).to(dtype)
    got = antidiagonal_scores(q, k, stride, bq, bk, causal)
    want = antidiagonal_scores_reference(q, k, stride, bq, bk, causal)
    torch.testing.assert_close(got, want, atol=2e-5 if dtype == torch.float32 else 1e-3, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-4, rtol=0)


def test_triton_head_chunks_and_cross_lengths():
    q, k = torch.randn(2, 2, 300, 64), torch.randn(2, 1, 420, 64)
    want = antidiagonal_scores_reference(q, k, 8, 64, 64, True, scale=0.2)
    # a scratch cap of one head forces four launches of one (batch, head) each
    got = antidiagonal_scores(q, k, 8, 64, 64, True, scale=0.2, max_scratch_bytes=1)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_triton_gpu_tile_sizes():
    # the 128 x 128 tiles the GPU uses, run through the interpreter once
    q, k = torch.randn(1, 2, 1100, 64), torch.randn(1, 1, 1100, 64)
    for causal, stride, bk in ((True, 8, 128), (False, 16, 64)):
        got = antidiagonal_scores(q, k, stride, 128, bk, causal, tile=128)
        torch.testing.assert_close(got, antidiagonal_scores_reference(q, k, stride, 128, bk, causal), atol=2e-5, rtol=0)


@pytest.mark.parametrize("fp8", [False, True])
def test_kernel_compiles_for_h100_without_spills(fp8):
    from sm90_compile import sm90_resources

    from spbench.kernels.antidiag import gpu_candidates, key_interleave

    configs = []
    elem = "fp8e4nv" if fp8 else "bf16"
    # (128, 8, 64): the METHODS.md default (block_kv 64, 8 reshaped columns per block)
    for d, stride, bk, causal in ((128, 8, 64, False), (128, 8, 128, False), (128, 16, 128, False), (64, 16, 64, True)):
        cpb = bk // stride
        cands = gpu_candidates(fp8)
        # the default key interleave: fp8 interleaves (in its e4m3 copy), bf16 keeps K as is
        group = key_interleave(cpb, [dict(BLOCK_N=c[1]) for c in cands]) if fp8 else 1
        for bm, bn, warps, stages, flat, *tma in cands:  # every candidate the GPU autotune may pick
            consts = dict(STRIDE=stride, D=d, BLOCK_M=bm, CPB=cpb, KPT=bn // cpb, CAUSAL=causal, DOT_F32=False, FLAT=flat, TMA=tma[0] if tma else 0, FP8=fp8, G=group)
            descs = {"QD": f"tensordesc<{elem}[{bm}, {d}]>", "KD": f"tensordesc<{elem}[{bn}, {d}]>"} if tma else {"QD": f"*{elem}", "KD": f"*{elem}"}
            descs.update(Q=f"*{elem}", K=f"*{elem}")
            configs.append({"constexprs": consts, "options": {"num_warps": warps, "num_stages": stages}, "pointers": descs})
    results = sm90_resources(
        "spbench.kernels.antidiag", "_tile_lse", configs,
        {"LSE": "*fp32", "ROW_LSE": "*fp32", "QSC": "*fp32", "KSC": "*fp32"},
        div16=("sqb", "sqh", "sql", "skb", "skh", "skl", "ld"), ones=("sqd", "skd"), floats=("qk_scale",),
    )
    for cfg, res in zip(configs, results):
        # the nested-loop fallback (the previous kernel) is allowed its small spill
        assert res["STACK"] <= (0 if cfg["constexprs"]["FLAT"] else 16) and res["pipelined"], (cfg, res)
        assert res["SHARED"] <= 227 * 1024, (cfg, res)  # sm_90's per-block limit
        consts = cfg["constexprs"]
        if consts["G"] == 8:
            # interleaved keys: the block sums are register adds; only the row max and row sum
            # cross the 4 lanes of a row (2 butterfly rounds each; per-block max + sum took 128)
            assert res["shfl_bfly"] <= 8, (cfg, res)
        elif consts["CPB"] == 8:
            assert res["shfl_bfly"] <= 72, (cfg, res)  # block-major: 3 rounds per block sum (was 128 with the block max)


@pytest.mark.parametrize("bm,bn,flat,tma", sorted({(c[0], c[1], c[4], c[5] if len(c) > 5 else 0) for c in
                                                    __import__("spbench.kernels.antidiag", fromlist=["GPU_CONFIGS"]).GPU_CONFIGS}))
def test_triton_every_gpu_config(bm, bn, flat, tma):
    # every autotune candidate's tile shape, loop form and load path gives the same scores (interpreter);
    # TMA needs lengths a multiple of the stride (1008: of 8 and 16 but not of any block, so the last
    # reshaped block is partial and K's rows per head are not a whole number of blocks), the pointer
    # path gets a ragged tail
    lq = 1008 if tma else 900
    q, k = torch.randn(2, 2, lq, 64), torch.randn(2, 1, lq, 64)  # two batches: descriptor rows cross heads
    for causal, stride, bk, interleave in ((True, 8, 128, 1), (False, 16, 64, 1), (True, 8, 64, 8), (False, 8, 128, 8)):
        cfg = dict(BLOCK_M=bm, KPT=bn // (bk // stride), num_warps=4, num_stages=1, FLAT=flat, TMA=tma)
        got = antidiagonal_scores(q, k, stride, 128, bk, causal, config=cfg, interleave=interleave)
        torch.testing.assert_close(got, antidiagonal_scores_reference(q, k, stride, 128, bk, causal), atol=2e-5, rtol=0)


@pytest.mark.parametrize("interleave", [2, 4, 8])
@pytest.mark.parametrize(
    "lq,lk,hq,hkv,stride,bk,causal,dtype",
    [
        (900, 863, 2, 1, 8, 64, True, torch.float32),
        (777, 777, 4, 2, 8, 64, False, torch.float32),
        (520, 610, 2, 2, 16, 64, True, torch.float32),
        (389, 389, 2, 1, 4, 32, True, torch.bfloat16),
    ],
)
def test_triton_key_interleave(interleave, lq, lk, hq, hkv, stride, bk, causal, dtype):
    # keys interleaved in groups of KV blocks (a permuted copy outside fp8) give the same scores
    q = (torch.randn(1, hq, lq, 64) * 1.5).to(dtype)
    k = (torch.randn(1, hkv, lk, 64) * 1.5).to(dtype)
    got = antidiagonal_scores(q, k, stride, 128, bk, causal, interleave=interleave)
    want = antidiagonal_scores_reference(q, k, stride, 128, bk, causal)
    torch.testing.assert_close(got, want, atol=2e-5 if dtype == torch.float32 else 1e-3, rtol=0)


def test_key_interleave_rules():
    from spbench.kernels.antidiag import interleave_keys, key_interleave

    assert key_interleave(8, [dict(BLOCK_N=128)]) == 8
    assert key_interleave(16, [dict(BLOCK_N=128), dict(BLOCK_N=64)]) == 4  # the interpreter's tile
    assert key_interleave(128, [dict(BLOCK_N=128)]) == 1
    k = torch.arange(2 * 20 * 3, dtype=torch.float32).view(1, 2, 20 * 3, 1).expand(1, 2, 60, 2)  # a strided view
    # stride 3, 2 reshaped rows per block, 2 blocks per group: 20 reshaped rows padded to 20
    out = interleave_keys(k, 3, 2, 2, 20)
    rows = out[0, 0, :, 0].view(20, 3)[:, 0] / 3  # first term of each reshaped row -> its source row
    assert rows[:8].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    q = torch.randn(1, 1, 300, 64)
    for bad in (3, 16, 0):  # not a power of two / more blocks than a 64-wide tile holds
        with pytest.raises(ValueError, match="interleave"):
            antidiagonal_scores(q, q, 8, 128, 64, False, interleave=bad)


def test_tma_config_needs_stride_multiple():
    q = torch.randn(1, 1, 900, 64)
    with pytest.raises(ValueError, match="TMA"):
        antidiagonal_scores(q, q, 8, 128, 128, False, config=dict(BLOCK_M=64, KPT=4, num_warps=4, num_stages=1, FLAT=1, TMA=1))


def test_plan_with_triton_scorer_equals_torch_scorer():
    q, k, v = torch.randn(1, 2, 640, 64), torch.randn(1, 1, 640, 64), torch.randn(1, 1, 640, 64)
    a = XAttention(causal=True, scorer="triton").plan(q, k, v).to_levels()
    b = XAttention(causal=True, scorer="torch").plan(q, k, v).to_levels()
    assert torch.equal(a, b)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tau", [0.5, 0.9])
def test_plan_keeps_smallest_prefix_with_forced_blocks(causal, tau):
    q, k, v = torch.randn(1, 2, 1024, 64), torch.randn(1, 2, 1024, 64), torch.randn(1, 2, 1024, 64)
    m = XAttention(causal=causal, tau=tau, scorer="torch", sink=not causal)
    plan = m.plan(q, k, v)
    forced = forced_mask(q, k, 128, 128, causal, causal, True)
    levels = check_plan(plan, q, k, forced=forced)
    scores = m.scores(q, k).double()
    kept = levels > 0
    mass = (scores * kept).sum(-1)
    assert (mass >= tau - 1e-5).all()
    optional = kept & ~forced
    lightest = scores.masked_fill(~optional, 2).amin(-1)
    assert ((mass - lightest < tau + 1e-5) | (lightest == 2)).all(), "the kept set is not minimal"
    best_dropped = scores.masked_fill(kept, -1).amax(-1)
    assert (best_dropped <= lightest + 1e-6).all()


@pytest.mark.parametrize("causal", [False, True])
def test_budget_one_equals_dense(causal):
    q, k, v = torch.randn(1, 4, 400, 64), torch.randn(1, 2, 400, 64), torch.randn(1, 2, 400, 64)
    m = spbench.get_method("antidiagonal", budget=1.0, causal=causal, executor=EXECUTOR, scorer="torch")
    plan = m.plan(q, k, v)
    assert plan.density == pytest.approx(1.0)
    torch.testing.assert_close(m.run(q, k, v, plan).float(), exact_attention(q, k, v, causal=causal), atol=2e-5, rtol=1e-4)


def test_budget_maps_to_density_on_video():
    density = budget_sweep_density(lambda b: XAttention(budget=b, scorer="torch", executor=EXECUTOR))
    for budget, got in density.items():
        assert abs(got - budget) <= 0.2 * budget, (budget, got)


def test_error_falls_with_budget_on_video():
    assert_error_falls(error_by_budget(lambda b: XAttention(budget=b, scorer="torch", executor=EXECUTOR)))


def test_tau_is_a_native_knob():
    q, k, v = video(2048)
    d = [spbench.get_method("xattention", tau=t, scorer="torch").plan(q, k, v).density for t in (0.5, 0.9, 0.99)]
    assert d[0] < d[1] < d[2]


@pytest.mark.parametrize(
    "knobs,match",
    [
        (dict(stride=3), "stride"),
        (dict(block_q=96), "block_q"),
        (dict(block_kv=100, stride=8), "block_kv"),
        (dict(tau=0.0), "tau"),
        (dict(tau=1.2), "tau"),
        (dict(scorer="cuda"), "scorer"),
        (dict(scratch_mb=0), "scratch_mb"),
    ],
)
def test_bad_knobs(knobs, match):
    with pytest.raises(SpbenchError, match=match):
        spbench.get_method("xattention", **knobs)


@pytest.mark.parametrize(
    "lq,lk,hq,hkv,stride,bk,bm,bn,causal,fp8",
    [
        # n_cols 128, a whole number of 32-column tiles: no ragged edge; causal: interior tiles below the
        # diagonal, masked ones on it (4 row programs x 4 tiles); TMA (lengths a multiple of the stride)
        (1024, 1024, 2, 1, 8, 128, 32, 32, False, False),
        (1024, 1024, 2, 1, 8, 128, 32, 32, True, False),
        # ragged last tile (pointer path), cross lengths, GQA
        (1000, 1100, 4, 2, 8, 128, 32, 64, True, False),
        (1000, 1100, 4, 2, 8, 128, 32, 64, False, False),
        # 32 KV blocks per tile (KPT > 16): scratch rows must hold the last tile's blocks past nkv = 35
        (1100, 1100, 2, 1, 8, 32, 64, 128, False, False),
        (1100, 1100, 2, 1, 8, 32, 64, 128, True, False),
        # fp8: interleave 8 x 4 columns = 32 < 64-column tiles, n_cols 94 -> 96 key-scale rows: the last
        # tile's key scales past them are masked (read unmasked on interior tiles); TMA (the e4m3 copies are
        # padded) and pointer loads
        (1500, 1500, 2, 1, 16, 64, 64, 64, False, True),
        (1500, 1504, 2, 1, 16, 64, 32, 64, True, True),
    ],
)
def test_triton_interior_and_edge_tiles(lq, lk, hq, hkv, stride, bk, bm, bn, causal, fp8):
    # _tile_lse masks only edge tiles (ragged tail, causal diagonal) and stores row-masked scratch rows:
    # shapes with many tiles of each kind (interior, diagonal, ragged) give the reference's scores
    from spbench.kernels.fp8_rows import fp8_values

    q, k = torch.randn(1, hq, lq, 64) * 1.5, torch.randn(1, hkv, lk, 64) * 1.5
    cfg = dict(BLOCK_M=bm, KPT=bn // (bk // stride), num_warps=4, num_stages=1, FLAT=1, TMA=int(lq % stride == 0 and lk % stride == 0 or fp8 and not causal))
    got = antidiagonal_scores(q, k, stride, 128, bk, causal, config=cfg, fp8=fp8)
    if fp8:
        q, k = fp8_values(q, stride), fp8_values(k, stride)
    torch.testing.assert_close(got, antidiagonal_scores_reference(q, k, stride, 128, bk, causal), atol=2e-5, rtol=0)
