"""The Triton pyramid executor and pooling kernel vs the plain-PyTorch references.

Runs on the CPU under TRITON_INTERPRET=1 (conftest sets it). Shapes are tiny
and ragged (lengths not multiples of any block), so one kernel call stays
around a second in the interpreter.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spbench.errors import SpbenchError
from spbench.kernels import pyramid_attention, tuning
from spbench.kernels.executor import execute
from spbench.kernels.pool import build_pyramid
from spbench.kernels.pyramid_triton import level_tiles, run_plan
from spbench.kernels.reference import pool_kv, pyramid_attention_reference, repeated_keys_reference
from spbench.kernels.schedule import build_schedule
from spbench.plan import Plan

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
LEVEL_VALUES = torch.tensor([0, 1, 2, 4, 8])


@pytest.fixture(autouse=True)
def _unpinned():
    tuning.pin_config(None)
    yield
    tuning.pin_config(None)


def make_qkv(b, hq, hkv, lq, lk, d, dtype=torch.float32):
    return (torch.randn(b, hq, lq, d).to(dtype), torch.randn(b, hkv, lk, d).to(dtype), torch.randn(b, hkv, lk, d).to(dtype))


def random_levels(b, h, lq, lk, bq, bk, gen=None):
    nq, nk = -(-lq // bq), -(-lk // bk)
    return LEVEL_VALUES[torch.randint(0, 5, (b, h, nq, nk), generator=gen)]


def check_against_reference(q, k, v, levels, bq, bk, causal, extras=None, lse=True):
    extras = extras or {}
    plan = Plan.from_levels(levels, q.shape[2], k.shape[2], bq, bk, causal, extras=extras)
    out, got_lse = run_plan(q, k, v, plan, return_lse=True)
    ref, ref_lse = pyramid_attention_reference(
        q, k, v, levels, bq, bk, causal, row_scale=extras.get("row_scale"), compensation=extras.get("compensation"), return_lse=True
    )
    assert out.dtype == q.dtype and out.shape == q.shape
    assert not out.isnan().any()
    tol = TOL[q.dtype]
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=0)
    if lse:
        finite = torch.isfinite(ref_lse)
        assert torch.equal(finite, torch.isfinite(got_lse))
        assert (got_lse[~finite] == float("-inf")).all()
        torch.testing.assert_close(got_lse[finite], ref_lse[finite], atol=tol, rtol=0)
    return out


# ---------------------------------------------------------------- pooling kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_kernel_matches_reference(dtype):
    for length in (1, 13, 64):
        k, v = torch.randn(1, 2, length, 16).to(dtype), torch.randn(1, 2, length, 16).to(dtype)
        pyr = build_pyramid(k, v.transpose(1, 2).contiguous().transpose(1, 2))  # strided v too
        for p in (2, 4, 8):
            want_k, sizes = pool_kv(k.float(), p)
            want_v, _ = pool_kv(v.float(), p)
            assert pyr.k[p].shape == want_k.shape and pyr.k[p].dtype == dtype
            # fp32 sums rounded once to the input dtype (one ulp of slack)
            rtol = 1e-6 if dtype == torch.float32 else 2**-7
            torch.testing.assert_close(pyr.k[p].float(), want_k, atol=1e-6, rtol=rtol)
            torch.testing.assert_close(pyr.v[p].float(), want_v, atol=1e-6, rtol=rtol)
            if length % p:  # the ragged last group is the mean of its m < p keys
                m = length % p
                torch.testing.assert_close(pyr.k[p][:, :, -1].float(), k[:, :, -m:].float().mean(2), atol=1e-6, rtol=rtol)


def test_pool_kernel_level_subsets():
    """Only the asked levels are built, each equal to the full pyramid's; K and V (other strides) in one launch."""
    k = torch.randn(2, 3, 45, 32)
    v = torch.randn(2, 45, 3, 32).transpose(1, 2)  # [B, H, L, D] with L-major strides
    full = build_pyramid(k, v)
    assert full.levels == (2, 4, 8)
    for levels in ((2,), (4,), (8,), (2, 8), (4, 8)):
        part = build_pyramid(k, v, levels)
        assert part.levels == levels and part.matches(k, v)
        for p in levels:
            assert torch.equal(part.k[p], full.k[p]) and torch.equal(part.v[p], full.v[p])
            assert part.k[p].is_contiguous() and part.v[p].is_contiguous()
        for p in set((2, 4, 8)) - set(levels):
            assert p not in part.k and p not in part.v
    assert build_pyramid(k, v, ()).levels == ()
    with pytest.raises(SpbenchError, match="some of"):
        build_pyramid(k, v, (3,))


def test_executor_pools_only_its_levels(monkeypatch):
    """A plan of levels 1, 2 and 8 builds levels 2 and 8 only; a given pyramid lacking one of them is refused."""
    from spbench.kernels import pyramid_triton

    built = []
    real = pyramid_triton.build_pyramid
    monkeypatch.setattr(pyramid_triton, "build_pyramid", lambda k, v, levels=(2, 4, 8): built.append(levels) or real(k, v, levels))
    q, k, v = make_qkv(1, 2, 1, 40, 200, 16)
    levels = torch.tensor([1, 2, 0, 8, 8, 1, 2])[None, None, None].expand(1, 2, 1, 7).clone()
    out = pyramid_attention(q, k, v, levels, 64, 32)
    torch.testing.assert_close(out, pyramid_attention_reference(q, k, v, levels, 64, 32), atol=2e-5, rtol=0)
    assert built == [(2, 8)]
    with pytest.raises(SpbenchError, match="holds levels"):
        pyramid_attention(q, k, v, levels, 64, 32, pyramid=build_pyramid(k, v, (2, 4)))
    out = pyramid_attention(q, k, v, levels, 64, 32, pyramid=build_pyramid(k, v))  # a full one serves any plan
    torch.testing.assert_close(out, pyramid_attention_reference(q, k, v, levels, 64, 32), atol=2e-5, rtol=0)
    assert built == [(2, 8)]


def test_pyramid_reuse_and_staleness():
    q, k, v = make_qkv(1, 2, 1, 40, 70, 16)
    levels = torch.full((1, 2, 1, 3), 2)
    pyr = build_pyramid(k, v)
    assert pyr.matches(k, v)
    out = pyramid_attention(q, k, v, levels, 64, 32, pyramid=pyr)
    torch.testing.assert_close(out, pyramid_attention_reference(q, k, v, levels, 64, 32), atol=2e-5, rtol=0)
    k.add_(1.0)  # in-place change: the pyramid is stale now
    assert not pyr.matches(k, v)
    with pytest.raises(SpbenchError, match="other k/v"):
        pyramid_attention(q, k, v, levels, 64, 32, pyramid=pyr)
    # a stale pyramid in plan.extras is rebuilt, not used
    plan = Plan.from_levels(levels, 40, 70, 64, 32, extras={"pyramid": pyr})
    torch.testing.assert_close(run_plan(q, k, v, plan), pyramid_attention_reference(q, k, v, levels, 64, 32), atol=2e-5, rtol=0)


# ---------------------------------------------------------------- the executor
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_kv", [32, 64, 128])
@pytest.mark.parametrize("block_q", [64, 128])
def test_matches_reference_every_block_size(block_q, block_kv, causal):
    """All levels at once, GQA 2:1, batch 2, ragged Lq != Lk (head dims 64 and 128 in two cases)."""
    d = {(64, 32): 64, (128, 128): 128}.get((block_q, block_kv), 32)
    gen = torch.Generator().manual_seed(block_q + block_kv + causal)
    q, k, v = make_qkv(2, 2, 1, 150, 203, d)
    levels = random_levels(2, 2, 150, 203, block_q, block_kv, gen)
    check_against_reference(q, k, v, levels, block_q, block_kv, causal)


@pytest.mark.parametrize(
    "cfg",
    [
        "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=1",
        "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=1",
        "BLOCK_M=64,BLOCK_N=16,num_warps=4,num_stages=1,TMA=1",
        "BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=1,TMA=1",
        "BLOCK_M=128,BLOCK_N=128,BLOCK_NP=32,num_warps=8,num_stages=1,TMA=1",
    ],
)
def test_matches_reference_other_tiles(cfg):
    """Tiles smaller and larger than the blocks (packing, slicing, TMA loads)."""
    tuning.pin_config(cfg)
    gen = torch.Generator().manual_seed(7)
    q, k, v = make_qkv(1, 2, 1, 140, 260, 16)
    for block_kv, causal in ((32, True), (128, False)):
        levels = random_levels(1, 2, 140, 260, 128, block_kv, gen)
        check_against_reference(q, k, v, levels, 128, block_kv, causal)
    assert tuning.chosen_config()["source"] == "pinned"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    gen = torch.Generator().manual_seed(3)
    q, k, v = make_qkv(1, 2, 2, 100, 90, 64, dtype)
    for causal in (False, True):
        levels = random_levels(1, 2, 100, 90, 64, 32, gen)
        check_against_reference(q, k, v, levels, 64, 32, causal)


def test_second_reference_agrees():
    """The kernel against the independent repeated-keys reference."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = make_qkv(1, 2, 1, 90, 75, 16)
    levels = random_levels(1, 2, 90, 75, 64, 32, gen)
    for causal in (False, True):
        out = pyramid_attention(q, k, v, levels, 64, 32, causal)
        torch.testing.assert_close(out, repeated_keys_reference(q, k, v, levels, 64, 32, causal), atol=2e-5, rtol=0)


def test_dense_mode_is_sdpa():
    q, k, v = make_qkv(2, 4, 2, 130, 130, 32)
    for causal in (False, True):
        levels = torch.ones(2, 4, 3, 3, dtype=torch.int64)
        out = pyramid_attention(q, k, v, levels, 64, 64, causal)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True), atol=2e-5, rtol=0)


def test_epilogue_and_lse():
    gen = torch.Generator().manual_seed(11)
    q, k, v = make_qkv(2, 2, 1, 130, 100, 16)
    levels = random_levels(2, 2, 130, 100, 64, 32, gen)
    extras = {"row_scale": torch.rand(2, 2, 3, generator=gen) + 0.5, "compensation": torch.randn(2, 2, 3, 16, generator=gen)}
    for causal in (False, True):
        check_against_reference(q, k, v, levels, 64, 32, causal, extras)
    # the epilogue really acts: without it the output differs
    plain = run_plan(q, k, v, Plan.from_levels(levels, 130, 100, 64, 32))
    fused = run_plan(q, k, v, Plan.from_levels(levels, 130, 100, 64, 32, extras=extras))
    assert (plain - fused).abs().max() > 0.1


def test_empty_rows_give_zeros_not_nan():
    q, k, v = make_qkv(1, 2, 2, 100, 100, 16)
    levels = torch.ones(1, 2, 2, 4, dtype=torch.int64)
    levels[0, 0, 1] = 0  # a query block with no active KV block
    levels[0, 1, 0] = 0
    levels[0, 1, 0, 0] = 8  # causal: queries 0..6 see no full level-8 group
    for causal in (False, True):
        out = check_against_reference(q, k, v, levels, 64, 32, causal)
        assert (out[0, 0, 64:] == 0).all()
    out, lse = run_plan(q, k, v, Plan.from_levels(levels, 100, 100, 64, 32, causal=True), return_lse=True)
    assert (out[0, 1, :7] == 0).all() and (lse[0, 1, :7] == float("-inf")).all()
    assert torch.isfinite(lse[0, 1, 7:64]).all()
    # nothing active anywhere
    none = run_plan(q, k, v, Plan.from_levels(torch.zeros_like(levels), 100, 100, 64, 32))
    assert (none == 0).all()


def test_planted_wrong_level_is_caught():
    """Changing one block's level changes the answer beyond tolerance: the comparison can fail."""
    q, k, v = make_qkv(1, 1, 1, 64, 128, 16)
    levels = torch.tensor([[[[1, 8, 2, 1]]]])
    out = pyramid_attention(q, k, v, levels, 64, 32)
    torch.testing.assert_close(out, pyramid_attention_reference(q, k, v, levels, 64, 32), atol=2e-5, rtol=0)
    for planted in ([1, 4, 2, 1], [1, 8, 2, 0], [2, 8, 2, 1]):
        wrong = pyramid_attention_reference(q, k, v, torch.tensor([[[planted]]]), 64, 32)
        assert (out - wrong).abs().max() > 1e-2, planted


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_out_is_written_in_place_through_any_strides(causal, dtype):
    """out= as a transformers layer wants it: the [B, H, L, D] view of a [B, L, H, D] buffer.

    GQA 4:2, batch 2, ragged length, every level and the fused epilogue; the buffer
    starts as NaN so a row the kernel forgets to store is caught."""
    gen = torch.Generator().manual_seed(21 + causal)
    b, hq, hkv, length, d = 2, 4, 2, 150, 32
    q = torch.randn(b, length, hq, d, generator=gen).to(dtype).transpose(1, 2)  # strided, as a layer passes them
    k = torch.randn(b, length, hkv, d, generator=gen).to(dtype).transpose(1, 2)
    v = torch.randn(b, length, hkv, d, generator=gen).to(dtype).transpose(1, 2)
    levels = random_levels(b, hq, length, length, 64, 32, gen)
    extras = {"row_scale": torch.rand(b, hq, 3, generator=gen) + 0.5, "compensation": torch.randn(b, hq, 3, d, generator=gen)}
    plan = Plan.from_levels(levels, length, length, 64, 32, causal, extras=extras)
    buf = torch.full((b, length, hq, d), float("nan"), dtype=dtype)
    out, lse = run_plan(q, k, v, plan, out=buf.transpose(1, 2), return_lse=True)
    assert out.data_ptr() == buf.data_ptr() and out.stride() == buf.transpose(1, 2).stride()
    ref, ref_lse = pyramid_attention_reference(q, k, v, levels, 64, 32, causal, row_scale=extras["row_scale"], compensation=extras["compensation"], return_lse=True)
    rtol = 0 if dtype == torch.float32 else 2**-7  # the epilogue pushes values past 4: one bf16 ulp there is 0.03
    torch.testing.assert_close(buf.transpose(1, 2).float(), ref, atol=TOL[dtype], rtol=rtol)
    assert torch.equal(run_plan(q, k, v, plan), out)  # bit-identical to the freshly allocated output
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=TOL[dtype], rtol=0)


def test_out_fallbacks_and_errors():
    """A last dim that is not contiguous goes through a temporary; an empty plan zeroes out; bad out is refused."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = make_qkv(1, 2, 1, 70, 70, 16)
    levels = random_levels(1, 2, 70, 70, 64, 32, gen)
    plan = Plan.from_levels(levels, 70, 70, 64, 32, True)
    want = run_plan(q, k, v, plan)
    odd = torch.full((1, 2, 16, 70), float("nan")).transpose(2, 3)  # stride(-1) == 70
    assert run_plan(q, k, v, plan, out=odd) is odd and torch.equal(odd, want)
    via_torch = torch.full((1, 70, 2, 16), float("nan"))
    execute(q, k, v, plan, backend="torch", out=via_torch.transpose(1, 2))
    torch.testing.assert_close(via_torch.transpose(1, 2), want, atol=2e-5, rtol=0)
    empty = torch.full((1, 70, 2, 16), float("nan"))
    run_plan(q, k, v, Plan.from_levels(torch.zeros_like(levels), 70, 70, 64, 32), out=empty.transpose(1, 2))
    assert (empty == 0).all()
    for bad, match in ((torch.empty(1, 2, 69, 16), "out must be"), (torch.empty(1, 2, 70, 16, dtype=torch.float64), "out must be"), ("x", "tensor")):
        with pytest.raises(SpbenchError, match=match):
            run_plan(q, k, v, plan, out=bad)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    lq=st.integers(1, 140),
    lk=st.integers(1, 140),
    block_kv=st.sampled_from([32, 64, 128]),
    causal=st.booleans(),
    group=st.sampled_from([1, 2]),
)
def test_random_level_maps(seed, lq, lk, block_kv, causal, group):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2 * group, lq, 16, generator=gen)
    k, v = torch.randn(1, 2, lk, 16, generator=gen), torch.randn(1, 2, lk, 16, generator=gen)
    levels = random_levels(1, 2 * group, lq, lk, 64, block_kv, gen)
    check_against_reference(q, k, v, levels, 64, block_kv, causal)


# ---------------------------------------------------------------- schedule, tiles, configs
def test_schedule_groups_levels_and_counts_clean_entries():
    levels = torch.tensor([[[[8, 1, 0, 2, 1, 8], [1, 1, 1, 1, 1, 1]]]])
    plan = Plan.from_levels(levels, 128, 180, 64, 32, causal=True)
    sched = build_schedule(plan)
    # row 0 (queries 0..63): blocks 2+ start after query 63 -> dropped;
    # blocks 0, 1 are not fully visible to query 0 -> not clean
    assert sched.idx[0, :2].tolist() == [1, 0]  # level 1 first, then level 8
    assert sched.count[0].tolist() == [1, 0, 0, 1, 0, 0, 0, 0]
    # row 1 (queries 64..127): blocks 0, 1 fully visible to query 64; 2, 3 partly; 4, 5 invisible
    assert sched.count[1].tolist() == [4, 0, 0, 0, 2, 0, 0, 0]
    assert sched.level_mask == 0b1001
    plain = build_schedule(Plan.from_levels(levels, 128, 180, 64, 32))
    # non-causal: everything kept, only the ragged last block (180 % 32 != 0) is unclean
    assert plain.count[0].tolist() == [2, 1, 0, 2, 2, 1, 0, 1]
    assert plain.idx[0, :5].tolist() == [1, 4, 3, 0, 5]


def test_int32_block_indices(monkeypatch):
    """Plans with more than 32767 KV blocks keep int32 indices; force that path on a small plan."""
    from spbench.kernels import schedule

    monkeypatch.setattr(schedule, "INT16_MAX_BLOCKS", 2)
    gen = torch.Generator().manual_seed(13)
    q, k, v = make_qkv(1, 2, 1, 70, 100, 16)
    levels = random_levels(1, 2, 70, 100, 64, 32, gen)
    assert build_schedule(Plan.from_levels(levels, 70, 100, 64, 32)).idx.dtype == torch.int32
    check_against_reference(q, k, v, levels, 64, 32, True)
    monkeypatch.undo()
    assert build_schedule(Plan.from_levels(levels, 70, 100, 64, 32)).idx.dtype == torch.int16


def test_level_p_block_costs_one_pth_of_the_tiles():
    for p in (1, 2, 4, 8):
        levels = torch.full((1, 1, 1, 64), p)
        plan = Plan.from_levels(levels, 64, 64 * 64, 64, 64)
        assert level_tiles(plan, 64)[p] == 64 // p


def test_config_parsing_and_pinning(monkeypatch):
    cfg = tuning.parse_config("BLOCK_N=32, num_warps=4")
    assert cfg.BLOCK_N == 32 and cfg.num_warps == 4 and cfg.BLOCK_M == tuning.DEFAULT.BLOCK_M
    with pytest.raises(SpbenchError):
        tuning.parse_config("BLOCK_N=48")
    with pytest.raises(SpbenchError):
        tuning.parse_config("tile=3")
    monkeypatch.setenv(tuning.ENV_VAR, "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=1")
    q, k, v = make_qkv(1, 1, 1, 64, 64, 16)
    pyramid_attention(q, k, v, torch.ones(1, 1, 1, 1, dtype=torch.int64), 64, 64)
    chosen = tuning.chosen_config()
    assert chosen["source"] == "pinned" and chosen["BLOCK_N"] == 32
    monkeypatch.delenv(tuning.ENV_VAR)
    pyramid_attention(q, k, v, torch.ones(1, 1, 1, 1, dtype=torch.int64), 64, 64)
    assert tuning.chosen_config()["source"] == "interpreter"
    tuning.pin_config(BLOCK_M=128)
    with pytest.raises(SpbenchError, match="divide block_q"):
        pyramid_attention(q, k, v, torch.ones(1, 1, 1, 1, dtype=torch.int64), 64, 64)


def test_bad_inputs_raise_clear_errors():
    q, k, v = make_qkv(1, 2, 1, 64, 64, 16)
    plan = Plan.from_levels(torch.ones(1, 2, 1, 1, dtype=torch.int64), 64, 64, 64, 64)
    with pytest.raises(SpbenchError, match="head dim"):
        run_plan(torch.randn(1, 2, 64, 24), torch.randn(1, 1, 64, 24), torch.randn(1, 1, 64, 24), plan)
    with pytest.raises(SpbenchError, match="plan is for"):
        run_plan(q[:, :, :32], k, v, plan)
    with pytest.raises(SpbenchError, match="dtype|fp16"):
        run_plan(q.double(), k.double(), v.double(), plan)
