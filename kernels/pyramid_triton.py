"""The pyramid kernel: one forward pass over a multi-level block-sparse plan.

Semantics are those of :func:`spbench.kernels.reference.pyramid_attention_reference`:
a level-p KV block attends to its keys/values mean-pooled in groups of p,
each pooled logit + ln(m) (m = p, or the size of a group the sequence end
cuts short); causal masking is top-left aligned and a pooled key is visible
to query t when its last position is <= t.

How the work is laid out (the choices the papers leave open):

* One program per (query tile of ``BLOCK_M`` rows, batch x query head); the
  query tiles are the fast grid axis so the programs of one head, which read
  the same K/V, run together; GQA maps query head h to KV head h // group
  without repeating K/V. Causal grids start with the longest rows.
* The work list is the plan's CSR row regrouped by level
  (:mod:`spbench.kernels.schedule`). Level p is walked in tiles of
  ``BLOCK_N`` rows of the pooled tensor: a level-p block owns
  ``R = block_kv / p`` consecutive pooled rows, a tile packs ``BLOCK_N / R``
  blocks through gathered row pointers (or, when ``R >= BLOCK_N``, covers a
  contiguous slice of one block). So a level-p block costs about 1/p of a
  level-1 block, whatever the block size.
* Tiles made only of clean entries (fully visible, not the ragged last
  block) run without any masking; only the last tiles of each level pay for
  the causal/end/packing masks. The +ln(p) of clean tiles is folded into the
  running max, so it costs nothing.
* Block indices are int16 (int32 beyond 32767 KV blocks): Triton's
  pipeliner keeps a 16-bit index load a plain load issued stages ahead, so
  K/V copies stay multi-buffered (an int32 index became an async copy the
  K/V copies waited on: 26% slower at 64-row tiles on H100). Contiguous
  tiles can use TMA descriptors; pooled levels may use their own tile
  height (``BLOCK_NP``), which avoids register spills at 128-row tiles.
* On sm_90 ``run_plan`` sends non-causal fp16/bf16 plans (any levels) to the
  warp-specialized Gluon kernel (:mod:`spbench.kernels.pyramid_gluon`),
  1.17-1.3x this kernel on H200; ``kernel=`` / ``SPBENCH_EXECUTOR_KERNEL``.
* Measured and rejected (H200, triton 3.6, results/reference/
  executor_bench_h200_fused_variants.json): one fused loop over all
  levels with per-tile level selects (level-1 tiles ~25% slower, the mix
  ~18% slower; the fused masked loop spills unless it runs 2 stages), and
  ``tl.range(warp_specialize=True)`` (fails to compile on sm_90).
* Softmax in base 2 with log2(e) folded into the scale; fp32 accumulators;
  the query tile is loaded once. A row that sees nothing returns zeros (its
  lse is -inf), never NaN.
* Epilogue: ``out = row_scale[qb] * O + compensation[qb]`` (fp32), and the
  natural-log LSE when asked for.
"""

from __future__ import annotations

import os

import torch

from spbench.errors import SpbenchError
from spbench.kernels import tuning
from spbench.kernels.pool import Pyramid, build_pyramid
from spbench.kernels.schedule import schedule_for
from spbench.method import check_out
from spbench.plan import LEVELS, Plan
from spbench.timing import event_ms

import triton  # noqa: E402  (this module is only imported where triton can run)
import triton.language as tl  # noqa: E402

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _tile(
    t, acc, l_i, m_i, q, q_pos,
    k_ptr, v_ptr, stride_kn, stride_vn, k_desc, v_desc,
    idx_ptr, n_ent, n_rows, kv_len, qk_scale,
    LEVEL: tl.constexpr, LOG2_LEVEL: tl.constexpr, R: tl.constexpr,
    BLOCK_N: tl.constexpr, D: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr,
):
    """Tile t of one level's entries; returns the updated softmax state.

    ``TMA`` (only when ``BLOCK_N <= R``: contiguous tiles) loads K/V tiles with
    tensor descriptors; rows past the end come back as zeros.
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    if BLOCK_N <= R:
        # A contiguous slice of one block.
        first = t * BLOCK_N
        blk = tl.load(idx_ptr + first // R).to(tl.int32)
        row0 = blk * R + first % R
        rows = row0 + offs_n
        ok = rows < n_rows
    else:
        # BLOCK_N // R blocks packed into one tile through gathered rows.
        g = t * BLOCK_N + offs_n
        e = g // R
        if MASKED:
            blk = tl.load(idx_ptr + e, mask=e < n_ent, other=0).to(tl.int32)
            ok = (e < n_ent) & (blk * R + g % R < n_rows)
        else:
            blk = tl.load(idx_ptr + e).to(tl.int32)
            ok = e >= 0
        rows = blk * R + g % R
        row0 = 0
    if TMA:
        k = k_desc.load([row0, 0])
    elif MASKED:
        k = tl.load(k_ptr + rows[:, None] * stride_kn + offs_d[None, :], mask=ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptr + rows[:, None] * stride_kn + offs_d[None, :])
    if UPCAST:
        k = k.to(tl.float32)
    qk = tl.dot(q, tl.trans(k), input_precision=PREC)
    if MASKED:
        start = rows * LEVEL
        size = tl.minimum(kv_len - start, LEVEL)
        visible = ok[None, :]
        if CAUSAL:
            visible = visible & ((start + size - 1)[None, :] <= q_pos[:, None])
        if LEVEL > 1:
            bias = tl.log2(tl.maximum(size, 1).to(tl.float32))
            s = qk * qk_scale + bias[None, :]
        else:
            s = qk * qk_scale
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        x = s - m_new[:, None]
    else:
        # Clean tile: +log2(p) folded into the row max and the shift.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale + LOG2_LEVEL)
        x = qk * qk_scale + (LOG2_LEVEL - m_new)[:, None]
    p = tl.math.exp2(x)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if TMA:
        v = v_desc.load([row0, 0])
    elif MASKED:
        v = tl.load(v_ptr + rows[:, None] * stride_vn + offs_d[None, :], mask=ok[:, None], other=0.0)
    else:
        v = tl.load(v_ptr + rows[:, None] * stride_vn + offs_d[None, :])
    acc = acc * alpha[:, None]
    if UPCAST:
        acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc, input_precision=PREC)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def _attend_level(
    acc, l_i, m_i, q, q_pos,
    k_ptr, v_ptr, stride_kn, stride_vn, k_desc, v_desc,
    idx_ptr, n_ent, t_lo, t_hi,
    n_rows, kv_len, qk_scale,
    LEVEL: tl.constexpr, LOG2_LEVEL: tl.constexpr, R: tl.constexpr,
    BLOCK_N: tl.constexpr, D: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr,
):
    """Tiles t_lo..t_hi of one level."""
    for t in range(t_lo, t_hi):
        acc, l_i, m_i = _tile(
            t, acc, l_i, m_i, q, q_pos, k_ptr, v_ptr, stride_kn, stride_vn, k_desc, v_desc,
            idx_ptr, n_ent, n_rows, kv_len, qk_scale, LEVEL, LOG2_LEVEL, R, BLOCK_N, D,
            MASKED, CAUSAL, PREC, UPCAST, TMA,
        )
    return acc, l_i, m_i


@triton.jit
def _walk_level(
    acc, l_i, m_i, q, q_pos, k_ptr, v_ptr, stride_kn, stride_vn,
    idx_ptr, n_ent, n_clean, n_rows, kv_len, qk_scale,
    LEVEL: tl.constexpr, LOG2_LEVEL: tl.constexpr, R: tl.constexpr,
    BLOCK_N: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """All entries of one level: clean tiles unmasked, then the rest masked."""
    n_full = (n_clean * R) // BLOCK_N
    n_tiles = (n_ent * R + BLOCK_N - 1) // BLOCK_N
    TMA: tl.constexpr = USE_TMA and BLOCK_N <= R
    if TMA:
        k_desc = tl.make_tensor_descriptor(k_ptr, shape=[n_rows, D], strides=[stride_kn, 1], block_shape=[BLOCK_N, D])
        v_desc = tl.make_tensor_descriptor(v_ptr, shape=[n_rows, D], strides=[stride_vn, 1], block_shape=[BLOCK_N, D])
    else:
        k_desc = k_ptr
        v_desc = v_ptr
    acc, l_i, m_i = _attend_level(
        acc, l_i, m_i, q, q_pos, k_ptr, v_ptr, stride_kn, stride_vn, k_desc, v_desc, idx_ptr, n_ent, 0, n_full,
        n_rows, kv_len, qk_scale, LEVEL, LOG2_LEVEL, R, BLOCK_N, D, False, CAUSAL, PREC, UPCAST, TMA,
    )
    acc, l_i, m_i = _attend_level(
        acc, l_i, m_i, q, q_pos, k_ptr, v_ptr, stride_kn, stride_vn, k_desc, v_desc, idx_ptr, n_ent, n_full, n_tiles,
        n_rows, kv_len, qk_scale, LEVEL, LOG2_LEVEL, R, BLOCK_N, D, True, CAUSAL, PREC, UPCAST, TMA,
    )
    return acc, l_i, m_i


# Lengths and counts vary per call: no integer specialisation on them, so one
# compiled kernel serves every sequence length (strides stay specialised).
@triton.jit(do_not_specialize=["q_len", "kv_len", "len2", "len4", "len8", "num_heads", "group", "num_qb", "width"])
def _pyramid_fwd(
    Q, K1, V1, K2, V2, K4, V4, K8, V8,
    Out, Lse, RowScale, Comp, Idx, Count,
    qk_scale, q_len, kv_len, len2, len4, len8,
    num_heads, group, num_qb, width,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
    so_b, so_h, so_l,
    BLOCK_Q: tl.constexpr, BLOCK_KV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_NP: tl.constexpr, D: tl.constexpr,
    CAUSAL: tl.constexpr, LEVEL_MASK: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_COMP: tl.constexpr, RETURN_LSE: tl.constexpr, PREC: tl.constexpr,
    UPCAST: tl.constexpr, USE_TMA: tl.constexpr,
):
    pid_m = tl.program_id(0)
    if CAUSAL:  # longest rows first
        pid_m = tl.num_programs(0) - 1 - pid_m
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    hk = h // group
    q_start = pid_m * BLOCK_M
    qb = q_start // BLOCK_Q
    row = bh.to(tl.int64) * num_qb + qb
    idx_row = Idx + row * width
    cnt = Count + row * 8
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q_pos = q_start + offs_m
    q = tl.load(Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h + q_pos[:, None] * sq_l + offs_d[None, :],
                mask=(q_pos < q_len)[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a fully masked tile gives p = 0, not NaN
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)

    # Level 1 reads K/V in place (any strides); pooled levels are contiguous [B, Hkv, Lp, D].
    kv_head = b.to(tl.int64) * (num_heads // group) + hk
    start = 0
    if LEVEL_MASK & 1:
        n = tl.load(cnt + 0)
        acc, l_i, m_i = _walk_level(
            acc, l_i, m_i, q, q_pos,
            K1 + b.to(tl.int64) * sk_b + hk.to(tl.int64) * sk_h, V1 + b.to(tl.int64) * sv_b + hk.to(tl.int64) * sv_h,
            sk_l, sv_l, idx_row + start, n, tl.load(cnt + 4), kv_len, kv_len, qk_scale,
            1, 0.0, BLOCK_KV, BLOCK_N, D, CAUSAL, PREC, UPCAST, USE_TMA,
        )
        start += n
    if LEVEL_MASK & 2:
        n = tl.load(cnt + 1)
        acc, l_i, m_i = _walk_level(
            acc, l_i, m_i, q, q_pos, K2 + kv_head * len2 * D, V2 + kv_head * len2 * D, D, D,
            idx_row + start, n, tl.load(cnt + 5), len2, kv_len, qk_scale,
            2, 1.0, BLOCK_KV // 2, BLOCK_NP, D, CAUSAL, PREC, UPCAST, USE_TMA,
        )
        start += n
    if LEVEL_MASK & 4:
        n = tl.load(cnt + 2)
        acc, l_i, m_i = _walk_level(
            acc, l_i, m_i, q, q_pos, K4 + kv_head * len4 * D, V4 + kv_head * len4 * D, D, D,
            idx_row + start, n, tl.load(cnt + 6), len4, kv_len, qk_scale,
            4, 2.0, BLOCK_KV // 4, BLOCK_NP, D, CAUSAL, PREC, UPCAST, USE_TMA,
        )
        start += n
    if LEVEL_MASK & 8:
        n = tl.load(cnt + 3)
        acc, l_i, m_i = _walk_level(
            acc, l_i, m_i, q, q_pos, K8 + kv_head * len8 * D, V8 + kv_head * len8 * D, D, D,
            idx_row + start, n, tl.load(cnt + 7), len8, kv_len, qk_scale,
            8, 3.0, BLOCK_KV // 8, BLOCK_NP, D, CAUSAL, PREC, UPCAST, USE_TMA,
        )

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    if HAS_SCALE:
        out = out * tl.load(RowScale + row)
    if HAS_COMP:
        out = out + tl.load(Comp + row * D + offs_d)[None, :]
    in_range = q_pos < q_len
    tl.store(Out + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + q_pos[:, None] * so_l + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=in_range[:, None])
    if RETURN_LSE:
        lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(Lse + bh.to(tl.int64) * q_len + q_pos, lse, mask=in_range)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise SpbenchError("q, k, v must be [batch, heads, seq, head_dim] with k and v of one shape")
    if q.shape[1] % k.shape[1] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise SpbenchError(f"incompatible q {tuple(q.shape)} and k {tuple(k.shape)}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise SpbenchError(f"the pyramid kernel takes fp16, bf16 or fp32 q/k/v of one dtype, got {q.dtype}/{k.dtype}/{v.dtype}")
    d = q.shape[-1]
    if d < 16 or d > 256 or d & (d - 1):
        raise SpbenchError(f"the pyramid kernel needs a power-of-two head dim in 16..256, got {d}")
    if plan.q_len != q.shape[2] or plan.kv_len != k.shape[2]:
        raise SpbenchError(f"plan is for Lq={plan.q_len}, Lk={plan.kv_len} but got Lq={q.shape[2]}, Lk={k.shape[2]}")
    if tuple(plan.kv_num_blocks.shape) != (q.shape[0], q.shape[1], plan.num_q_blocks):
        raise SpbenchError(f"plan block map is for [B, H, NQ]={tuple(plan.kv_num_blocks.shape)}, inputs need {(q.shape[0], q.shape[1], plan.num_q_blocks)}")
    for name, size in (("block_q", plan.block_q), ("block_kv", plan.block_kv)):
        if size not in (16, 32, 64, 128, 256):
            raise SpbenchError(f"{name}={size} must be one of 16, 32, 64, 128, 256")
    if plan.block_kv < 8:
        raise SpbenchError("block_kv must be at least 8 (the largest pooling level)")


def _rows_ok(t: torch.Tensor) -> torch.Tensor:
    """Inner dim contiguous and row offsets within int32 (the kernel's row math)."""
    if t.stride(-1) != 1 or t.shape[2] * t.stride(2) >= 2**31:
        return t.contiguous()
    return t


def _store_ok(out: torch.Tensor) -> bool:
    """The kernel's store needs a contiguous last dim and row offsets within int32."""
    return out.stride(-1) == 1 and out.shape[2] * out.stride(2) < 2**31


def _extra(plan: Plan, name: str, shape: tuple, device) -> torch.Tensor | None:
    value = plan.extras.get(name)
    if value is None:
        return None
    value = torch.as_tensor(value, device=device)
    if tuple(value.shape) != shape:
        raise SpbenchError(f"plan.extras[{name!r}] must have shape {list(shape)}, got {list(value.shape)}")
    return value.to(torch.float32).contiguous()


def pyramid_for(k: torch.Tensor, v: torch.Tensor, plan: Plan, pyramid: Pyramid | None, level_mask: int) -> Pyramid:
    """The pooled pyramid to use: the given one, plan.extras['pyramid'], or a fresh one holding only the pooled
    levels of ``level_mask`` (bit r: level 2**r), so a plan without level 4 does not pay for writing it."""
    needed = pooled_levels(level_mask)
    for cand in (pyramid, plan.extras.get("pyramid")):
        if cand is not None and cand.matches(k, v) and set(needed) <= set(cand.levels):
            return cand
    if pyramid is not None:
        if not pyramid.matches(k, v):
            raise SpbenchError("the pyramid passed in was built from other k/v tensors")
        raise SpbenchError(f"the pyramid passed in holds levels {pyramid.levels}; the plan needs {needed}")
    return build_pyramid(k, v, needed)


def pooled_levels(level_mask: int) -> tuple[int, ...]:
    """The pooled levels (2, 4, 8) of a schedule's level mask."""
    return tuple(p for r, p in enumerate(LEVELS) if r and level_mask >> r & 1)


def run_plan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: Plan,
    scale: float | None = None,
    return_lse: bool = False,
    pyramid: Pyramid | None = None,
    out: torch.Tensor | None = None,
    kernel: str | None = None,
):
    """Run ``plan`` with the Triton kernel (or the Gluon one). Returns ``out`` (q's dtype) or ``(out, lse)``.

    ``pyramid``: a :class:`~spbench.kernels.pool.Pyramid` built from these
    k/v to reuse (else ``plan.extras['pyramid']`` if it matches, else one is
    built here, only when the plan has pooled levels).
    ``out``: a ``[B, Hq, Lq, D]`` tensor of q's dtype, any strides (e.g. the
    ``transpose(1, 2)`` view of a ``[B, Lq, Hq, D]`` buffer), written in
    place and returned; the kernel stores straight into it when its last dim
    is contiguous, else through a temporary.
    ``kernel``: ``"auto"`` (default; ``SPBENCH_EXECUTOR_KERNEL`` overrides the
    default): the Gluon kernel (:mod:`spbench.kernels.pyramid_gluon`) on sm_90
    for the calls it supports (non-causal fp16/bf16, contiguous k/v, block
    sizes in :func:`~spbench.kernels.pyramid_gluon.unsupported`) whose levels
    are in its ``AUTO_LEVEL_MASK`` (all of them), this Triton kernel
    otherwise; ``"triton"`` /
    ``"gluon"`` force one (``"gluon"`` raises when the call is unsupported).
    """
    if plan.is_dense:
        raise SpbenchError("a dense plan has no block map; run dense attention instead")
    _check(q, k, v, plan)
    check_out(q, out)
    if out is not None and not _store_ok(out):
        result = run_plan(q, k, v, plan, scale=scale, return_lse=return_lse, pyramid=pyramid, kernel=kernel)
        out.copy_(result[0] if return_lse else result)
        return (out, result[1]) if return_lse else out
    if _use_gluon(q, k, v, plan, kernel):
        from spbench.kernels.pyramid_gluon import run_plan_gluon  # noqa: PLC0415

        return run_plan_gluon(q, k, v, plan, scale=scale, return_lse=return_lse, pyramid=pyramid, out=out)
    bsz, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else float(scale)
    sched = schedule_for(plan)
    nqb = plan.num_q_blocks

    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(bsz, hq, lq, device=q.device, dtype=torch.float32) if return_lse else out
    row_scale = _extra(plan, "row_scale", (bsz, hq, nqb), q.device)
    comp = _extra(plan, "compensation", (bsz, hq, nqb, d), q.device)
    if lq == 0 or sched.level_mask == 0 and row_scale is None and comp is None:
        out.zero_()
        if return_lse:
            lse.fill_(float("-inf"))
            return out, lse
        return out

    if sched.level_mask & ~1:
        pyr = pyramid_for(k, v, plan, pyramid, sched.level_mask)
        pooled = [t for p in (2, 4, 8) for t in (pyr.k.get(p, k), pyr.v.get(p, v))]  # an absent level is never read
    else:
        pooled = [k, v] * 3  # never read: LEVEL_MASK compiles those loops out
    q, k, v = _rows_ok(q), _rows_ok(k), _rows_ok(v)
    lens = [(lk + p - 1) // p for p in (2, 4, 8)]
    dummy = out
    # The Triton interpreter's bf16 dot is wrong (triton 3.8): there, bf16
    # tiles are widened to fp32 right before each dot (values unchanged).
    upcast = q.dtype == torch.bfloat16 and (_interpreting() or q.device.type != "cuda")
    prec = "ieee" if q.dtype == torch.float32 or upcast else "tf32"
    key = (
        d, str(q.dtype), plan.causal, plan.block_q, plan.block_kv, sched.level_mask,
        row_scale is not None, comp is not None, return_lse,
        tuning.length_bucket(lk), _dense_like(plan, sched),
    )

    tma_ok = _tma_ok([k, v, *pooled])

    def launch(cfg: tuning.KernelConfig) -> None:
        use_tma = bool(cfg.TMA) and tma_ok
        if use_tma:
            _ensure_allocator(q.device)
        grid = (triton.cdiv(lq, cfg.BLOCK_M), bsz * hq)
        _pyramid_fwd[grid](
            q, k, v, *pooled,
            out, lse, row_scale if row_scale is not None else dummy, comp if comp is not None else dummy,
            sched.idx, sched.count,
            scale * LOG2E, lq, lk, *lens,
            hq, hq // hkv, nqb, sched.width,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            BLOCK_Q=plan.block_q, BLOCK_KV=plan.block_kv,
            BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_NP=cfg.BLOCK_NP or cfg.BLOCK_N, D=d,
            CAUSAL=plan.causal, LEVEL_MASK=sched.level_mask,
            HAS_SCALE=row_scale is not None, HAS_COMP=comp is not None, RETURN_LSE=return_lse, PREC=prec, UPCAST=upcast, USE_TMA=use_tma,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

    cfg = tuning.select(key, d, plan.block_q, _interpreting() or q.device.type != "cuda", lambda c: event_ms(lambda: launch(c), q.device))
    launch(cfg)
    return (out, lse) if return_lse else out


KERNEL_ENV = "SPBENCH_EXECUTOR_KERNEL"
KERNELS = ("auto", "triton", "gluon")


def _use_gluon(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, kernel: str | None) -> bool:
    """Whether this call runs the Gluon kernel (see ``run_plan``'s ``kernel``)."""
    choice = (kernel or os.environ.get(KERNEL_ENV, "") or "auto").strip().lower()
    if choice not in KERNELS:
        raise SpbenchError(f"kernel={choice!r} (or {KERNEL_ENV}) must be one of {', '.join(KERNELS)}")
    if choice == "triton" or (choice == "auto" and (_interpreting() or q.device.type != "cuda")):
        return False
    from spbench.kernels import pyramid_gluon  # noqa: PLC0415

    reason = pyramid_gluon.unsupported(q, k, v, plan)
    if choice == "gluon" and reason:
        raise SpbenchError(f"kernel='gluon' requested but the Gluon path {reason}")
    if choice == "auto" and schedule_for(plan).level_mask & ~pyramid_gluon.AUTO_LEVEL_MASK:
        return False  # levels where the Gluon path is not measured faster
    return reason is None


def _tma_ok(tensors: list[torch.Tensor]) -> bool:
    """TMA descriptors need 16-byte aligned bases and row strides."""
    if not hasattr(tl, "make_tensor_descriptor"):
        return False
    for t in tensors:
        unit = 16 // t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s % unit for s in t.stride()[:-1]):
            return False
    return True


_allocator_set = False


def _ensure_allocator(device: torch.device) -> None:
    """Device-side tensor descriptors need a scratch allocator (set once)."""
    global _allocator_set
    if _allocator_set:
        return

    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device=device)

    triton.set_allocator(alloc)
    _allocator_set = True


def _dense_like(plan: Plan, sched) -> bool:
    total = sum(sched.totals.values())
    possible = plan.kv_num_blocks.numel() * plan.num_kv_blocks
    return total * 2 > possible


def level_tiles(plan: Plan, block_n: int) -> dict[int, int]:
    """Compute tiles per level the kernel walks for ``plan`` at tile width ``block_n`` (cost tables)."""
    sched = schedule_for(plan)
    counts = sched.count[:, :4].long()
    out = {}
    for r, p in enumerate(LEVELS):
        rows_per_entry = plan.block_kv // p
        out[p] = int(((counts[:, r] * rows_per_entry + block_n - 1) // block_n).sum())
    return out


__all__ = ["run_plan", "level_tiles", "build_pyramid", "Pyramid"]
