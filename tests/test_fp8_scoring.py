"""fp8 (e4m3) scoring for xattention and psa: the quantizer, both scoring kernels and the score_dtype knob."""

import pytest
import torch

import spbench
from planner_checks import video
from spbench.errors import SpbenchError
from spbench.kernels import fp8_rows
from spbench.kernels.antidiag import antidiagonal_scores, antidiagonal_scores_reference
from spbench.kernels.fp8_rows import dequantize_rows, fp8_values, quantize_rows, quantize_rows_reference, use_fp8
from spbench.kernels.psa_score import psa_importance, psa_importance_reference, sample_offsets

pytestmark = pytest.mark.skipif(fp8_rows.FP8_DTYPE is None, reason="torch without float8_e4m3fn")


def _qk(hq, hkv, lq, lk, d, dtype=torch.bfloat16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # rows of very different magnitudes: per-row scales must follow them
    q = torch.randn(1, hq, lq, d, generator=gen) * torch.rand(1, hq, lq, 1, generator=gen).mul(6).exp2()
    k = torch.randn(1, hkv, lk, d, generator=gen) * torch.rand(1, hkv, lk, 1, generator=gen).mul(6).exp2()
    return q.to(dtype), k.to(dtype)


@pytest.mark.parametrize("group,length,dim", [(1, 100, 64), (8, 203, 128), (16, 64, 64), (4, 77, 32)])
def test_quantizer_matches_reference(group, length, dim):
    x, _ = _qk(3, 1, length, 1, dim)
    x[0, 0, : 2 * group] = 0  # zero groups: scale 0, zeros, no NaN
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # [B, L, H, D] memory, as transformers hands it over
    y, scale = quantize_rows(strided, group)
    y_ref, scale_ref = quantize_rows_reference(x, group)
    assert y.dtype == fp8_rows.FP8_DTYPE and y.shape == y_ref.shape and y.is_contiguous()
    torch.testing.assert_close(scale, scale_ref, rtol=1e-6, atol=0)
    assert scale[0, 0, :2].eq(0).all() and y[0, 0, : 2 * group].float().eq(0).all()
    # The same e4m3 value except on an exact rounding tie (the scale's last bit may differ) or
    # below e4m3's smallest normal: then one step apart, on a tiny share of the entries.
    a, b = y.float(), y_ref.float()
    step = torch.maximum(a.abs(), b.abs()) / 8 + 2.0**-9
    assert (a - b).abs().le(step).all()
    assert (a != b).float().mean() < 0.01
    # dequantized values are within half a step (relative 1/16) of the input
    back = dequantize_rows(y, scale, length)
    groups = x.float().view(1, 3, -1, group * dim) if length % group == 0 else None
    err = (back - x.float()).abs()
    assert (err <= x.float().abs() / 16 + scale.repeat_interleave(group, 2)[:, :, :length, None] * 2.0**-9 + 1e-12).all()
    if groups is not None:
        assert torch.equal(scale, groups.abs().amax(-1) / 448)


def test_quantizer_pads_rows():
    x, _ = _qk(2, 1, 50, 1, 64)
    y, scale = quantize_rows(x, 8, rows_pad=64)
    assert y.shape == (1, 2, 64, 64) and scale.shape == (1, 2, 8)
    assert y[:, :, 56:].float().eq(0).all() and scale[:, :, 7].eq(0).all()
    with pytest.raises(ValueError, match="rows_pad"):
        quantize_rows(x, 8, rows_pad=60)


@pytest.mark.parametrize(
    "lq,lk,hq,hkv,d,stride,bq,bk,causal",
    [
        (256, 256, 2, 1, 64, 8, 128, 128, False),
        (203, 250, 4, 2, 64, 8, 128, 64, True),
        (512, 384, 2, 2, 128, 16, 128, 128, False),
        (389, 389, 2, 1, 64, 4, 32, 32, True),
    ],
)
def test_antidiagonal_fp8_matches_reference_on_quantized_values(lq, lk, hq, hkv, d, stride, bq, bk, causal):
    q, k = _qk(hq, hkv, lq, lk, d)
    got = antidiagonal_scores(q, k, stride, bq, bk, causal, fp8=True)
    # the reference on exactly the values the kernel multiplied (its own quantizer's output)
    qd, kd = dequantize_rows(*quantize_rows(q, stride), lq), dequantize_rows(*quantize_rows(k, stride), lk)
    torch.testing.assert_close(got, antidiagonal_scores_reference(qd, kd, stride, bq, bk, causal), atol=2e-5, rtol=0)
    # and it really scored the quantized values: the bf16 scores differ
    exact = antidiagonal_scores_reference(q, k, stride, bq, bk, causal)
    assert not torch.allclose(got, exact, atol=2e-5, rtol=0)


@pytest.mark.parametrize("interleave", [1, 2, 4, 8])
@pytest.mark.parametrize("lq,lk,hq,hkv,stride,bk,causal", [(203, 250, 4, 2, 8, 64, True), (330, 301, 2, 1, 8, 64, False), (520, 480, 2, 2, 16, 64, True)])
def test_antidiagonal_fp8_key_interleave(interleave, lq, lk, hq, hkv, stride, bk, causal):
    # interleaved e4m3 keys (the default in fp8) score the same values as block-major ones
    q, k = _qk(hq, hkv, lq, lk, 64, seed=interleave)
    qd, kd = dequantize_rows(*quantize_rows(q, stride), lq), dequantize_rows(*quantize_rows(k, stride), lk)
    want = antidiagonal_scores_reference(qd, kd, stride, 128, bk, causal)
    got = antidiagonal_scores(q, k, stride, 128, bk, causal, fp8=True, interleave=interleave)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("interleave,block,length", [(8, 8, 1000), (4, 16, 517), (2, 2, 64)])
def test_quantizer_interleaved_rows(interleave, block, length):
    from spbench.kernels.fp8_rows import interleaved_source_torch

    x = torch.randn(2, 3, length, 32) * 3
    x[0, 1, 8:16] = 0  # a zero group: scale 0
    rows_pad = -(-length // (interleave * block * 8)) * interleave * block * 8
    y, scale = quantize_rows(x, 8, rows_pad, interleave, block)
    y0, scale0 = quantize_rows(x, 8, rows_pad)
    src = interleaved_source_torch(torch.arange(rows_pad // 8), interleave, block)
    assert sorted(src.tolist()) == list(range(rows_pad // 8))  # a permutation of whole groups
    torch.testing.assert_close(scale, scale0[:, :, src], atol=0, rtol=0)
    torch.testing.assert_close(y.float().view(2, 3, -1, 8, 32), y0.float().view(2, 3, -1, 8, 32)[:, :, src], atol=0, rtol=0)
    yr, sr = quantize_rows_reference(x, 8, rows_pad, interleave, block)
    torch.testing.assert_close(sr, scale, atol=0, rtol=0)
    assert (yr.float() != y.float()).float().mean() < 1e-3  # the torch cast may round a subnormal tie differently
    with pytest.raises(ValueError, match="interleave"):
        quantize_rows(x, 8, rows_pad + 8, interleave, block)


def test_antidiagonal_fp8_ragged_head_chunks():
    q, k = _qk(2, 1, 300, 420, 64, seed=3)
    got = antidiagonal_scores(q, k, 8, 64, 64, True, scale=0.2, max_scratch_bytes=1, fp8=True)
    want = antidiagonal_scores_reference(fp8_values(q, 8), fp8_values(k, 8), 8, 64, 64, True, scale=0.2)
    # fp8_values uses the torch quantizer: a rare tie may round the other way, so a looser bound
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    "lq,lk,hq,hkv,d,bq,bk,causal",
    [(256, 256, 2, 1, 64, 128, 64, False), (203, 250, 4, 2, 64, 128, 64, True), (300, 300, 2, 2, 128, 64, 32, True)],
)
def test_psa_fp8_matches_reference_on_quantized_values(lq, lk, hq, hkv, d, bq, bk, causal):
    q, k = _qk(hq, hkv, lq, lk, d)
    q[0, 0, :40] = 0  # zero sampled rows: scale 0 must not turn masked logits into NaN
    k[0, 0, :2 * bk] = 0  # zero KV blocks: block scale 0 likewise
    q_off, k_off = sample_offsets(hq, bq, bq // 4, 1, 1), sample_offsets(hq, bk, bk // 4, 1, 2)
    for key_scale in ("row", "block"):
        got = psa_importance(q, k, q_off, k_off, bq, bk, causal, fp8=True, fp8_key_scale=key_scale)
        assert not got.isnan().any()
        want = psa_importance_reference(q, k, q_off, k_off, bq, bk, causal, fp8=True, fp8_key_scale=key_scale)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # per-row key scales: the same values as quantizing the whole K per row
    qd, kd = dequantize_rows(*quantize_rows(q, 1), lq), dequantize_rows(*quantize_rows(k, 1), lk)
    torch.testing.assert_close(psa_importance(q, k, q_off, k_off, bq, bk, causal, fp8=True, fp8_key_scale="row"),
                               psa_importance_reference(qd, kd, q_off, k_off, bq, bk, causal), atol=1e-5, rtol=0)


def test_psa_fp8_block_key_scales_differ_from_row_scales():
    # keys of very different magnitudes in one block: a shared scale rounds the small ones differently
    q, k = _qk(2, 1, 512, 512, 64)
    q_off, k_off = sample_offsets(2, 128, 32, 0, 1), sample_offsets(2, 64, 16, 0, 2)
    per_block = psa_importance(q, k, q_off, k_off, 128, 64, False, fp8=True)
    per_row = psa_importance(q, k, q_off, k_off, 128, 64, False, fp8=True, fp8_key_scale="row")
    assert not torch.equal(per_block, per_row)
    torch.testing.assert_close(per_block, per_row, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="fp8_key_scale"):
        psa_importance(q, k, q_off, k_off, fp8=True, fp8_key_scale="head")


def test_psa_fp8_differs_from_input_precision_and_stays_close():
    q, k = _qk(2, 1, 512, 512, 64, dtype=torch.float32)
    q, k = q / 8, k / 8
    q_off, k_off = sample_offsets(2, 128, 32, 0, 1), sample_offsets(2, 64, 16, 0, 2)
    fp8 = psa_importance(q, k, q_off, k_off, 128, 64, True, fp8=True)
    full = psa_importance(q, k, q_off, k_off, 128, 64, True)
    assert not torch.equal(fp8, full)
    torch.testing.assert_close(fp8, full, atol=0.05, rtol=0)


def test_score_dtype_knob_resolution(monkeypatch):
    x = torch.zeros(1, 1, 8, 16, dtype=torch.bfloat16)
    assert use_fp8("input", x, True) is False
    assert use_fp8("fp8", x, False) is True  # reference scorer: quantized values in torch
    assert use_fp8("auto", x, False) is False  # fp8 buys nothing off the GPU
    with pytest.raises(SpbenchError, match="score_dtype"):
        use_fp8("int4", x, True)
    monkeypatch.setattr(fp8_rows, "fp8_available", lambda device: False)
    with pytest.raises(SpbenchError, match="sm_89"):
        use_fp8("fp8", x, True)


@pytest.mark.parametrize("name,knobs", [("xattention", dict(stride=8)), ("psa", {}), ("psa", dict(variant="understanding"))])
def test_planners_fp8_triton_and_torch_scorers_agree(name, knobs):
    q, k, v = video(seq=1024, heads=2)
    plans = [spbench.get_method(name, budget=0.2, score_dtype="fp8", scorer=s, **knobs).plan(q, k, v) for s in ("triton", "torch")]
    got, want = plans[0].to_levels(), plans[1].to_levels()
    # scores agree to ~1e-5, so at most a near-tie swaps a block or two
    assert (got != want).float().mean() < 0.01, (got != want).sum()
    assert abs(plans[0].density - plans[1].density) < 0.01


def test_bad_score_dtype_is_a_clear_error():
    with pytest.raises(SpbenchError, match="score_dtype"):
        spbench.get_method("xattention", score_dtype="int8")


needs_fp8_gpu = pytest.mark.skipif(
    fp8_rows.interpreting() or not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
    reason="needs a CUDA GPU with fp8 tensor cores, TRITON_INTERPRET=0",
)


@needs_fp8_gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq", [4096, 4059])
def test_fp8_scorers_on_gpu_every_candidate(causal, lq):
    # the real e4m3 tensor-core path and every autotune candidate, against the references on the quantized values
    from spbench.kernels.antidiag import tile_configs
    from spbench.kernels.psa_score import rowmax_configs

    gen = torch.Generator(device="cuda").manual_seed(0)
    q = (torch.randn(1, 4, lq, 128, device="cuda", generator=gen) * 1.5).bfloat16()
    k = (torch.randn(1, 2, lq, 128, device="cuda", generator=gen) * 1.5).bfloat16()
    q_off, k_off = sample_offsets(4, 128, 32, 0, 1), sample_offsets(4, 64, 16, 0, 2)
    for key_scale in ("row", "block"):
        want = psa_importance_reference(q, k, q_off, k_off, 128, 64, causal, fp8=True, fp8_key_scale=key_scale)
        for cfg in rowmax_configs(q.device, 128, 16, fp8=True):
            got = psa_importance(q, k, q_off, k_off, 128, 64, causal, config=cfg, fp8=True, fp8_key_scale=key_scale)
            torch.testing.assert_close(got, want, atol=1e-3, rtol=0, msg=lambda m, cfg=cfg: f"{cfg} {key_scale}: {m}")
    for stride, bk in ((8, 128), (16, 128), (8, 64)):
        qd, kd = dequantize_rows(*quantize_rows(q, stride), lq), dequantize_rows(*quantize_rows(k, stride), lq)
        want = antidiagonal_scores_reference(qd, kd, stride, 128, bk, causal)
        for cfg in tile_configs(q.device, bk // stride, tma=True, fp8=True):
            for interleave in (None, 1):  # interleaved keys (the default) and block-major ones
                got = antidiagonal_scores(q, k, stride, 128, bk, causal, config=cfg, fp8=True, interleave=interleave)
                torch.testing.assert_close(got, want, atol=1e-3, rtol=0, msg=lambda m, cfg=cfg: f"{cfg} {interleave}: {m}")
