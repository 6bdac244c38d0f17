"""XAttention's antidiagonal block scores: Triton kernels and a PyTorch reference.

For stride S, reshaped query row r pairs query positions r*S + S-1-i with
reshaped key row c's positions c*S + i (i < S): their dot product is the sum
of the antidiagonal of the S x S tile (r, c) of Q K^T. Those sums, scaled by
``scale / S`` (scale = 1/sqrt(d) by default), are softmaxed per reshaped row
in fp32, and the probabilities are summed inside each block_q x block_kv
block and divided by the block's reshaped row count, so every block row of
the score ``[B, Hq, NQ, NKV]`` sums to 1.

Choices the paper leaves open:

* Ragged lengths: Q and K are zero-padded to a multiple of S, so the last
  reshaped row / column sums only the real pairs of its tile; there are
  ceil(Lq/S) reshaped rows and ceil(Lk/S) columns.
* Causal: reshaped entry (r, c) is masked when c > r (key tile after the
  query tile; the diagonal tile is kept whole), top-left aligned like SDPA.
* Block sizes must be multiples of S with block/S a power of two.

The Triton path never materialises the (Lq/S) x (Lk/S) matrix:

1. ``_tile_lse``: one program per (BLOCK_M reshaped rows, batch*head); it
   loops over KV tiles (one flat loop over (tile, term) pairs, so loads stay
   prefetched across tile boundaries), computes the scaled sums with S
   ``tl.dot`` calls of head-dim depth, and writes, per (reshaped row, KV block), the
   log-sum-exp of the row's entries in that block (base 2) plus the row's
   overall log-sum-exp (online over the tiles). Causal tiles past the
   program's last row are skipped. The epilogue takes one exp2 per entry
   against the running row max and sums each block's entries. The keys
   may be interleaved in groups of G KV blocks (:func:`key_interleave`;
   reshaped key row ``c`` of block ``j`` at column ``c * G + j`` of its
   group): in the wgmma accumulator a thread holds columns
   ``8 i + 2 (lane % 4) + {0, 1}``, so with G = 8 a block's columns are
   all in one thread and its sum is register adds (block-major columns
   need butterfly shuffles across lanes). Static PTX counts at d = 128,
   stride 8 (benchmarks/inspect_xattn_sm90.py): the block-major kernel
   with a per-block max had 64 shuffles (block_kv 128) / 128 (block_kv
   64); block-major sums alone 36 / 68; interleaved 8 (row max and sum).
   fp8 writes its e4m3 copy of K in that order (and its scales), at no
   extra cost; bf16 keeps K as is unless ``interleave`` asks for a
   permuted copy. Column masks (ragged tail, causal) use each column's
   source reshaped row (:func:`~spbench.kernels.fp8_rows.interleaved_source`;
   the permutation repeats per tile, so it is one loop-invariant int32
   vector) and run on edge tiles only (the last tile, causal tiles that
   reach past the program's first row): interior tiles skip the per-entry
   select. Scratch rows hold every tile's blocks, so the per-tile store is
   masked by row only and vectorizes. Static SASS at d = 128, stride 8
   (fp8, TMA 128 x 128 tiles): the epilogue ran ~1450 instructions per
   thread and tile with 64-bit column indices and the mask on every tile;
   an interior tile's takes ~690 now (benchmarks/inspect_xattn_sm90.py,
   results/reference/xattn_epilogue_sm90.md).
2. ``_block_sums``: one program per (query block, KV block range,
   batch*head) turns those into probabilities exp2(lse_block - lse_row) and
   sums them over the query block's rows.

Tile shapes / warps / stages / loop form are autotuned per shape on CUDA
(:mod:`spbench.kernels.score_tuning`). Scratch is ceil(Lq/S) x NKV fp32 per
(batch, head); heads are processed in chunks so it stays under
``max_scratch_bytes``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from spbench.kernels import score_tuning
from spbench.kernels.fp8_rows import interleaved_source, interpreting, quantize_rows  # interpreting: re-exported for psa_score

LOG2E = 1.4426950408889634


def dot_in_fp32(x: torch.Tensor) -> bool:
    """Upcast ``tl.dot`` operands to fp32 in the kernel?

    Only for bfloat16 under TRITON_INTERPRET=1: the interpreter multiplies
    bfloat16 bit patterns in ``tl.dot`` (triton-lang/triton#11584, "not
    supported yet"). On the GPU bf16 goes to the tensor cores as is.
    """
    return x.dtype == torch.bfloat16 and interpreting()


def check_blocks(stride: int, block_q: int, block_kv: int) -> None:
    """Raise ValueError unless both blocks are multiples of the stride with a power-of-two ratio."""
    for name, block in (("block_q", block_q), ("block_kv", block_kv)):
        if stride < 1 or block % stride or (block // stride) & (block // stride - 1):
            raise ValueError(f"{name}={block} must be a multiple of stride={stride} with {name}/stride a power of two")


@triton.jit
def _tile_logits(acc, row_scale, KSC_T, src, rows32, c0, edge, n_cols, k_rows,
                 BLOCK_N: tl.constexpr, FP8: tl.constexpr, CAUSAL: tl.constexpr):
    """Scaled logits of one finished tile; masked entries -inf, on edge tiles only.

    ``KSC_T``: the tile's key scales (fp8); ``src``: each column's tile-local
    source reshaped row (:func:`interleaved_source` repeats per tile: BLOCK_N
    is a multiple of G * CPB); ``rows32``: the program's reshaped rows (int32).
    ``edge``: the tile may hold masked columns (past n_cols, or after
    some row under causal). Interior tiles skip the per-entry select and the
    key-scale mask (their columns are all < n_cols <= k_rows), which changes
    nothing but work. Column indices are int32, relative to the tile.
    """
    scale = row_scale
    if FP8:
        cj = tl.arange(0, BLOCK_N)
        if edge:
            ks = tl.load(KSC_T + cj, mask=cj < k_rows - c0, other=0.0)
        else:
            ks = tl.load(KSC_T + cj)
        scale = row_scale * ks[None, :]
    s = acc * scale
    if edge:
        valid = (src < n_cols - c0)[None, :]
        if CAUSAL:
            valid = valid & (src[None, :] <= rows32[:, None] - c0)
        s = tl.where(valid, s, float("-inf"))
    return s


@triton.jit
def _lse_epilogue(s, lse_ptrs, row_ok, m_i, l_i,
                  BLOCK_M: tl.constexpr, KPT: tl.constexpr, CPB: tl.constexpr, G: tl.constexpr):
    """Per-(row, KV block) log-sum-exp of one tile's logits ``s`` to scratch; online row LSE update.

    One exp2 per entry, relative to the running row max (no per-block max:
    an entry more than 126 below the row max underflows to 0, a probability
    under 2^-126 of the row total anyway), then the block sums: with G = 8
    every column of a block is in one thread's registers of the wgmma
    accumulator, so they need no shuffles. The store is masked by row only
    (scratch rows hold every tile's KV blocks, ``ld >= n_tiles * KPT``;
    blocks past nkv get -inf and are never read), so it vectorizes.
    """
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    # columns (group g, sample c, block j) -> block g * G + j of the tile
    bsum = tl.reshape(tl.sum(tl.reshape(p, [BLOCK_M, KPT // G, CPB, G]), axis=2), [BLOCK_M, KPT])
    lse = tl.where(bsum > 0.0, m_safe[:, None] + tl.log2(tl.maximum(bsum, 1e-37)), float("-inf"))
    tl.store(lse_ptrs, lse, mask=row_ok)
    l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(bsum, axis=1)
    return m_new, l_i


@triton.jit
def _finish_tile(acc, t, pid_m, row_scale, k_scale_base, src, rows32, n_cols, k_rows, lse_ptrs, row_ok, m_i, l_i,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KPT: tl.constexpr, CPB: tl.constexpr, G: tl.constexpr,
                 FP8: tl.constexpr, CAUSAL: tl.constexpr):
    """Tile t's accumulated dot products -> its scratch block LSEs and the running row LSE. Masks only on
    edge tiles: the ragged last tile, and under causal a tile reaching past the program's first row."""
    c0 = t * BLOCK_N
    edge = c0 + BLOCK_N > n_cols
    if CAUSAL:
        edge = edge | (c0 + BLOCK_N - 1 > pid_m * BLOCK_M)
    s = _tile_logits(acc, row_scale, k_scale_base + c0, src, rows32, c0, edge, n_cols, k_rows, BLOCK_N, FP8, CAUSAL)
    return _lse_epilogue(s, lse_ptrs + t * KPT, row_ok, m_i, l_i, BLOCK_M, KPT, CPB, G)


@triton.jit
def _tile_lse(
    Q, K, QD, KD, LSE, ROW_LSE, QSC, KSC,
    sqb, sqh, sql, sqd,
    skb, skh, skl, skd,
    bh0, hq, group, lq, lk, n_rows, n_cols, k_rows, nkv, ld, qk_scale,
    STRIDE: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, CPB: tl.constexpr, KPT: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_F32: tl.constexpr, FLAT: tl.constexpr, TMA: tl.constexpr, FP8: tl.constexpr,
    G: tl.constexpr,
):
    # K holds k_rows reshaped rows per head (lk its rows), interleaved in
    # groups of G KV blocks (G = 1: K itself); n_cols are real.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bh = bh0 + pid_bh
    b = bh // hq
    h = bh % hq
    hk = h // group
    BLOCK_N: tl.constexpr = CPB * KPT
    # int64 positions: no 32-bit overflow on long sequences, and the
    # interpreter skips its (slow) int32 overflow checks.
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    dims = tl.arange(0, D).to(tl.int64)
    col_offs = tl.arange(0, BLOCK_N).to(tl.int64)
    # reshaped row r, term i reads query r*S + S-1-i: start from i = 0 and step back
    q_last = rows * STRIDE + (STRIDE - 1)
    q_ptrs = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + q_last[:, None] * sql + dims[None, :] * sqd
    k_ptrs0 = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + (col_offs * STRIDE)[:, None] * skl + dims[None, :] * skd
    # loop-invariant epilogue operands: scratch pointers of the tile's first block, the row mask,
    # each tile column's tile-local source reshaped row, the rows in int32
    lse_ptrs = LSE + pid_bh.to(tl.int64) * n_rows * ld + rows[:, None] * ld + tl.arange(0, KPT)[None, :]
    row_ok = (rows < n_rows)[:, None]
    src = interleaved_source(tl.arange(0, BLOCK_N), G, CPB)
    rows32 = tl.arange(0, BLOCK_M) + pid_m * BLOCK_M
    row_scale = qk_scale
    k_scale_base = KSC
    if FP8:  # per reshaped-row scales of the e4m3 copies (fp8_rows.quantize_rows with group S)
        row_scale = qk_scale * tl.load(QSC + bh.to(tl.int64) * n_rows + rows, mask=rows < n_rows, other=0.0)[:, None]
        k_scale_base = KSC + (b * (hq // group) + hk).to(tl.int64) * k_rows
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    n_tiles = tl.cdiv(nkv, KPT)
    if CAUSAL:
        # columns after the program's last row are all masked
        n_tiles = tl.minimum(n_tiles, (pid_m * BLOCK_M + BLOCK_M - 1) // BLOCK_N + 1)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if FLAT:
        # One loop over (tile, term) pairs with the epilogue on a tile's last
        # term: the loads of the next tile are prefetched across the epilogue
        # instead of the pipeline draining and refilling at every tile.
        for step in range(0, n_tiles * STRIDE):
            t = step // STRIDE
            i = step % STRIDE
            pos = t * BLOCK_N + col_offs  # tile columns = rows of the (interleaved) K
            if TMA:
                # QD / KD view Q / K as [heads * rows, S * D] (one reshaped row
                # per line, Lq and Lk multiples of S): term i is a D-wide column
                # slice. Rows past this head's end read the next head's (or
                # TMA's zero fill); the epilogue masks them.
                qt = QD.load([bh * n_rows + pid_m * BLOCK_M, (STRIDE - 1 - i) * D])
                kt = KD.load([(b * (hq // group) + hk) * k_rows + t * BLOCK_N, i * D])
            else:
                qt = tl.load(q_ptrs - i * sql, mask=(q_last - i < lq)[:, None], other=0.0)
                kt = tl.load(k_ptrs0 + (t * BLOCK_N * STRIDE + i) * skl, mask=(pos * STRIDE + i < lk)[:, None], other=0.0)
            if DOT_F32:
                qt = qt.to(tl.float32)
                kt = kt.to(tl.float32)
            acc = tl.dot(qt, tl.trans(kt), acc)
            if i == STRIDE - 1:
                m_i, l_i = _finish_tile(acc, t, pid_m, row_scale, k_scale_base, src, rows32, n_cols, k_rows, lse_ptrs, row_ok,
                                        m_i, l_i, BLOCK_M, BLOCK_N, KPT, CPB, G, FP8, CAUSAL)
                acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    else:
        for t in range(0, n_tiles):
            pos = t * BLOCK_N + col_offs
            k_ptrs = k_ptrs0 + (t * BLOCK_N * STRIDE) * skl
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for i in range(STRIDE):  # a loop (not unrolled) so Triton can pipeline the loads
                qt = tl.load(q_ptrs - i * sql, mask=(q_last - i < lq)[:, None], other=0.0)
                kt = tl.load(k_ptrs + i * skl, mask=(pos * STRIDE + i < lk)[:, None], other=0.0)
                if DOT_F32:
                    qt = qt.to(tl.float32)
                    kt = kt.to(tl.float32)
                acc += tl.dot(qt, tl.trans(kt))
            m_i, l_i = _finish_tile(acc, t, pid_m, row_scale, k_scale_base, src, rows32, n_cols, k_rows, lse_ptrs, row_ok,
                                    m_i, l_i, BLOCK_M, BLOCK_N, KPT, CPB, G, FP8, CAUSAL)
    row_lse = tl.where(m_i == float("-inf"), float("-inf"), m_i + tl.log2(tl.maximum(l_i, 1e-30)))
    tl.store(ROW_LSE + pid_bh.to(tl.int64) * n_rows + rows, row_lse, mask=rows < n_rows)


@triton.jit
def _block_sums(
    LSE, ROW_LSE, OUT,
    bh0, n_rows, nkv, nq, ld,
    RPB: tl.constexpr, CPB: tl.constexpr, BLOCK_J: tl.constexpr, CAUSAL: tl.constexpr,
):
    qb = tl.program_id(0)
    pj = tl.program_id(1)
    pid_bh = tl.program_id(2)
    rows = qb * RPB + tl.arange(0, RPB).to(tl.int64)
    js = pj * BLOCK_J + tl.arange(0, BLOCK_J).to(tl.int64)
    row_ok = rows < n_rows
    valid = row_ok[:, None] & (js < nkv)[None, :]
    if CAUSAL:
        # must match _tile_lse: a block whose first column is after the row was never written
        valid = valid & ((js * CPB)[None, :] <= rows[:, None])
    lse = tl.load(LSE + pid_bh.to(tl.int64) * n_rows * ld + rows[:, None] * ld + js[None, :], mask=valid, other=float("-inf"))
    row_lse = tl.load(ROW_LSE + pid_bh.to(tl.int64) * n_rows + rows, mask=row_ok, other=0.0)
    prob = tl.where(valid, tl.exp2(lse - row_lse[:, None]), 0.0)
    n_valid = tl.minimum(n_rows - qb * RPB, RPB).to(tl.float32)
    score = tl.sum(prob, axis=0) / n_valid
    out_base = OUT + (bh0 + pid_bh).to(tl.int64) * nq * nkv + qb * nkv
    tl.store(out_base + js, score, mask=js < nkv)


# (BLOCK_M, BLOCK_N, num_warps, num_stages, FLAT[, TMA]) timed on the first
# call of a shape on CUDA. FLAT keeps the load pipeline full across tiles (the
# nested loop drains and refills it at every tile's epilogue; it stays as a
# candidate: it is the previous kernel, and spills 8-16 bytes at d=128).
# TMA = 1: loads through tensor descriptors, used when Q and K are
# contiguous with lengths a multiple of S (else those configs are not
# tried); on an H200 at 110k x 40 heads (d=128) the TMA 128 x 128 config won
# by 20% at stride 8 and 8% at stride 16 (results/reference/scorers_h200.json).
# 256-wide tiles spill heavily at d=128 (the epilogue holds a second
# BLOCK_M x BLOCK_N fp32 tile) and 4 pointer-load stages overflow shared
# memory, so neither is tried. The FLAT configs compile for sm_90 without
# spills (tests/test_xattention.py).
GPU_CONFIGS = (
    (128, 128, 8, 3, 1), (64, 128, 4, 3, 1), (128, 128, 8, 3, 0),
    (128, 128, 8, 3, 1, 1), (128, 128, 8, 2, 1, 1), (64, 128, 4, 3, 1, 1),
)
# fp8 operands take half the shared memory per stage: deeper pipelines fit (tried only in fp8).
FP8_EXTRA = ((64, 128, 4, 4, 1, 1), (128, 128, 8, 4, 1, 1))
INTERPRETER_CONFIG = (64, 64, 4, 1, 1)


def gpu_candidates(fp8: bool = False) -> list[tuple[int, ...]]:
    """GPU autotune candidates of ``_tile_lse`` (``FP8_EXTRA`` added for e4m3 operands)."""
    return list(GPU_CONFIGS) + (list(FP8_EXTRA) if fp8 else [])


def key_interleave(cpb: int, configs: list[dict[str, int]]) -> int:
    """KV blocks per interleave group of a scorer's key columns: up to 8, with ``G * cpb`` dividing every BLOCK_N.

    ``cpb``: key columns per KV block (reshaped rows here, sampled keys in
    :mod:`spbench.kernels.psa_score`, which uses this rule too). The wgmma
    accumulator gives a thread columns ``8 i + 2 (lane % 4) + {0, 1}``: with
    8 blocks interleaved (column ``c * 8 + j`` = column c of block j) a
    thread holds every column of its blocks, so per-block reductions are
    in-register; G = 4, 2 leave 1, 2 shuffle rounds.
    """
    group = 8
    while group > 1 and any(c["BLOCK_N"] % (group * cpb) for c in configs):
        group //= 2
    return group


def interleave_keys(k: torch.Tensor, stride: int, cpb: int, group: int, k_rows: int) -> torch.Tensor:
    """Contiguous copy of ``k`` zero-padded to ``k_rows`` reshaped rows, interleaved in groups of ``group`` KV blocks."""
    bsz, heads, lk, dim = k.shape
    kp = F.pad(k, (0, 0, 0, k_rows * stride - lk))
    kp = kp.view(bsz, heads, k_rows // (group * cpb), group, cpb, stride * dim).transpose(3, 4)
    return kp.reshape(bsz, heads, k_rows * stride, dim)


def tma_ok(q: torch.Tensor, k: torch.Tensor, stride: int) -> bool:
    """Can ``_tile_lse`` read Q and K through [rows, S*D] tensor descriptors?"""
    return all(x.is_contiguous() and x.shape[2] % stride == 0 and x.data_ptr() % 16 == 0 for x in (q, k))


def tile_configs(device: torch.device, cpb: int, tile: int | None = None, tma: bool = True, fp8: bool = False) -> list[dict[str, int]]:
    """Candidate launch configs of ``_tile_lse`` (BLOCK_N as KV blocks per tile, ``KPT``)."""
    if tile is not None:
        raw = [(tile, tile, 8 if tile >= 128 else 4, 3, 1)]
    elif device.type == "cuda" and not interpreting():
        raw = gpu_candidates(fp8)
    else:
        raw = [INTERPRETER_CONFIG]
    out = []
    for bm, bn, warps, stages, flat, *use_tma in raw:
        cfg = dict(BLOCK_M=bm, KPT=max(1, bn // cpb), num_warps=warps, num_stages=stages, FLAT=flat, TMA=use_tma[0] if use_tma else 0)
        if cfg["TMA"] and not tma:
            continue
        if cfg not in out:
            out.append(cfg)
    return out


def antidiagonal_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    stride: int = 8,
    block_q: int = 128,
    block_kv: int = 128,
    causal: bool = False,
    scale: float | None = None,
    max_scratch_bytes: int = 1 << 30,
    tile: int | None = None,
    config: dict[str, int] | None = None,
    fp8: bool = False,
    interleave: int | None = None,
) -> torch.Tensor:
    """Antidiagonal block scores with the Triton kernels, fp32 ``[B, Hq, NQ, NKV]``.

    ``q`` ``[B, Hq, Lq, D]``, ``k`` ``[B, Hkv, Lk, D]`` (GQA: Hq a multiple
    of Hkv, never repeated); same dtype; D a power of two >= 16. ``tile``
    pins square tiles and ``config`` a whole launch config (see
    :func:`tile_configs`) instead of the per-shape autotune. ``fp8``: score
    e4m3 copies of Q and K with one scale per reshaped row
    (:mod:`spbench.kernels.fp8_rows`; fp32 accumulation, twice the bf16
    tensor-core rate on Hopper). ``interleave``: KV blocks per interleave
    group of the reshaped keys (:func:`key_interleave`; the block sums of
    the kernel's epilogue are then shuffle-free). Default: interleaved in
    fp8 (the e4m3 copy is written in that order at no extra cost), 1 (K
    as is, no copy) otherwise; > 1 in bf16 costs a permuted copy of K.
    """
    check_blocks(stride, block_q, block_kv)
    bsz, hq, lq, dim = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if k.dtype != q.dtype:
        raise ValueError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
    n_rows, n_cols = math.ceil(lq / stride), math.ceil(lk / stride)
    nq, nkv = math.ceil(lq / block_q), math.ceil(lk / block_kv)
    rpb, cpb = block_q // stride, block_kv // stride
    q_scale = k_scale = None
    configs = [config] if config is not None else tile_configs(q.device, cpb, tile, True, fp8)
    group = (key_interleave(cpb, [dict(BLOCK_N=c["KPT"] * cpb) for c in configs]) if fp8 else 1) if interleave is None else interleave
    if group < 1 or group & (group - 1) or any((c["KPT"] * cpb) % (group * cpb) for c in configs):
        raise ValueError(f"interleave must be a power of two dividing every tile's KV blocks, got {group}")
    k_rows = math.ceil(n_cols / (group * cpb)) * group * cpb  # reshaped rows per head of the K the kernel reads
    if fp8:  # contiguous, zero-padded to whole reshaped rows: TMA always applies
        q, q_scale = quantize_rows(q, stride)
        k, k_scale = quantize_rows(k, stride, k_rows * stride, group, cpb)
    elif group > 1:
        k = interleave_keys(k, stride, cpb, group, k_rows)
    # reshaped rows per head of the K the kernel reads: the padded copy's k_rows, or K's own (TMA rows of a head
    # start there; K as is, a multiple of the stride under TMA, has fewer than k_rows)
    k_rows = math.ceil(k.shape[2] / stride)
    use_tma = tma_ok(q, k, stride)
    if config is None and not use_tma:
        configs = [c for c in configs if not c.get("TMA")]
    if any(c.get("TMA") for c in configs) and not use_tma:
        raise ValueError("TMA configs need contiguous q and k with lengths a multiple of the stride")
    if any(c.get("TMA") and not c.get("FLAT") for c in configs):
        raise ValueError("TMA loads are implemented in the flat loop only (FLAT=1)")
    # scratch row stride: 64-byte aligned rows holding every tile's KV blocks (the kernel's stores are masked by row only)
    row_blocks = max([16] + [c["KPT"] for c in configs])
    ld = math.ceil(nkv / row_blocks) * row_blocks
    qk_scale = (dim**-0.5 if scale is None else scale) / stride * LOG2E
    out = torch.empty(bsz, hq, nq, nkv, dtype=torch.float32, device=q.device)
    per_head = 4 * n_rows * (ld + 1)
    chunk = max(1, min(bsz * hq, max_scratch_bytes // per_head))
    lse = torch.empty(chunk, n_rows, ld, dtype=torch.float32, device=q.device)
    row_lse = torch.empty(chunk, n_rows, dtype=torch.float32, device=q.device)
    dot_f32 = dot_in_fp32(q) or (fp8 and interpreting())
    key = (str(q.dtype), dim, stride, block_kv, causal, lq.bit_length(), lk.bit_length(), group)
    block_j = 64
    for bh0 in range(0, bsz * hq, chunk):
        n_bh = min(chunk, bsz * hq - bh0)

        def launch(cfg, bh0=bh0, n_bh=n_bh):
            qd, kd = q, k  # unused placeholders unless TMA
            if cfg.get("TMA"):
                qd = TensorDescriptor.from_tensor(q.view(-1, stride * dim), [cfg["BLOCK_M"], dim])
                kd = TensorDescriptor.from_tensor(k.view(-1, stride * dim), [cfg["KPT"] * cpb, dim])
            _tile_lse[(triton.cdiv(n_rows, cfg["BLOCK_M"]), n_bh)](
                q, k, qd, kd, lse, row_lse,
                q_scale if fp8 else lse, k_scale if fp8 else lse,
                *q.stride(), *k.stride(),
                bh0, hq, hq // hkv, lq, k.shape[2], n_rows, n_cols, k_rows, nkv, ld, qk_scale,
                STRIDE=stride, D=dim, CPB=cpb, CAUSAL=causal, DOT_F32=dot_f32, FP8=fp8, G=group, **cfg,
            )

        cfg = configs[0] if len(configs) == 1 else score_tuning.pick("antidiag_lse", key, configs, launch, q.device)
        launch(cfg)
        _block_sums[(nq, triton.cdiv(nkv, block_j), n_bh)](
            lse, row_lse, out, bh0, n_rows, nkv, nq, ld,
            RPB=rpb, CPB=cpb, BLOCK_J=block_j, CAUSAL=causal,
        )
    return out


def antidiagonal_scores_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    stride: int = 8,
    block_q: int = 128,
    block_kv: int = 128,
    causal: bool = False,
    scale: float | None = None,
    chunk_blocks: int = 16,
) -> torch.Tensor:
    """Plain-PyTorch antidiagonal block scores (same definition), fp32 ``[B, Hq, NQ, NKV]``.

    Builds the reshaped Q (rows reversed within each group of S) and K
    explicitly and materialises ``chunk_blocks`` query blocks' worth of the
    reshaped score matrix at a time. Also the CPU fallback scorer.
    """
    check_blocks(stride, block_q, block_kv)
    bsz, hq, lq, dim = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    group = hq // hkv
    n_rows, n_cols = math.ceil(lq / stride), math.ceil(lk / stride)
    nq, nkv = math.ceil(lq / block_q), math.ceil(lk / block_kv)
    rpb, cpb = block_q // stride, block_kv // stride
    scale = (dim**-0.5 if scale is None else scale) / stride
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qr = F.pad(q.to(acc), (0, 0, 0, n_rows * stride - lq)).view(bsz, hq, n_rows, stride, dim).flip(3)
    qr = qr.reshape(bsz, hkv, group, n_rows, stride * dim)
    kr = F.pad(k.to(acc), (0, 0, 0, n_cols * stride - lk)).reshape(bsz, hkv, n_cols, stride * dim)  # K may be a strided view
    out = torch.empty(bsz, hq, nq, nkv, dtype=torch.float32, device=q.device)
    col = torch.arange(n_cols, device=q.device)
    for qb0 in range(0, nq, chunk_blocks):
        qb1 = min(nq, qb0 + chunk_blocks)
        r0, r1 = qb0 * rpb, min(n_rows, qb1 * rpb)
        s = torch.einsum("bgjrd,bgcd->bgjrc", qr[:, :, :, r0:r1], kr) * scale
        if causal:
            row = torch.arange(r0, r1, device=q.device)
            s = s.masked_fill(col[None, :] > row[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1).reshape(bsz, hq, r1 - r0, n_cols)
        p = F.pad(p, (0, nkv * cpb - n_cols, 0, (qb1 - qb0) * rpb - (r1 - r0)))
        sums = p.view(bsz, hq, qb1 - qb0, rpb, nkv, cpb).sum((3, 5))
        rows_in_block = torch.clamp(n_rows - torch.arange(qb0, qb1, device=q.device) * rpb, max=rpb)
        out[:, :, qb0:qb1] = (sums / rows_in_block[:, None].to(sums.dtype)).float()
    return out
