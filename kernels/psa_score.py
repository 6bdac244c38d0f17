"""PSA's sampled block importance (generation): Triton kernels and a PyTorch reference.

Sample ``sq`` query positions in every query block and ``sk`` key positions
in every KV block (offsets within the block, one set per query head, shared
by all blocks of that head). With s = q.k * scale over sampled pairs,

    S_ij = max over sampled q in block i of exp(max over sampled k in block j of s
                                                - max over all sampled keys of s)

and each row S_i. is normalised to sum to 1 (the released PSA code computes
this, not a full softmax).

Choices the paper leaves open:

* Ragged tail block of length m < block: sampled offset o reads position
  ``start + o % m`` (duplicates are harmless under max).
* Causal: a sampled key after a sampled query is excluded (-inf); a sampled
  query that sees no sampled key contributes 0; a row with no mass stays 0.

Triton path, never materialising the sampled Q K^T:

0. ``_gather_rows``: the sampled Q rows and K rows (per query head) are
   copied into contiguous, zero-padded ``[rows, D]`` buffers (1/4 of Q and
   of K at the default sampling), so the scoring tiles load unmasked and
   pipeline like a plain GEMM. The keys go in sample-major order within
   groups of G = 8 KV blocks (row ``s * G + j`` of a group = sample s of
   its block j; :func:`key_interleave`): in the wgmma accumulator a thread
   holds columns ``8 i + 2 (lane % 4) + {0, 1}``, i.e. every sample of 2
   blocks, so the per-block max is a register reduction (block-major
   columns needed 2 butterfly-shuffle rounds per value and tile).
1. ``_sampled_rowmax``: one program per (BLOCK_M sampled query rows,
   batch*head), looping over tiles of BLOCK_N sampled keys: one ``tl.dot``
   per tile, the max over each KV block's sampled keys written to scratch
   ``[rows, NKV]`` and a running max per (row, KV-block slot) whose
   cross-thread reduce runs once after the loop. Causal tiles past the
   program's last query block are skipped.
2. ``_block_max``: one program per (query block, KV block range,
   batch*head): ``max_q exp(rowmax - row_max_all)``.

Tile shapes / warps / stages are autotuned per shape on CUDA
(:mod:`spbench.kernels.score_tuning`). With ``fp8=True`` the sampled rows are
e4m3 (the gather quantizes them) with one scale per query row and one per
KV block of sampled keys, which multiplies the block's max instead of every
logit (``fp8_key_scale="row"``: per key row, before the max). The per-block maxima
stay fp32: an fp16 scratch (half the traffic of step 2) measured slower
overall on an H200 at 110k (results/reference/scorers_fp8_h200_v2.json:
23.7 vs 20.4 ms). Scratch is NQ*sq x NKV fp32 plus the
gathered rows per (batch, head); heads are processed in chunks so it stays
under ``max_scratch_bytes``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from spbench.kernels import score_tuning
from spbench.kernels.antidiag import LOG2E, dot_in_fp32, interpreting, key_interleave  # key_interleave: one rule for both scorers
from spbench.kernels.fp8_rows import FP8_DTYPE, dequantize_rows, quantize_rows, quantize_tile, round_to_e4m3


def sample_offsets(heads: int, block: int, samples: int, seed: int, salt: int = 0) -> torch.Tensor:
    """Seeded sorted offsets within a block, one set per head: int32 ``[heads, samples]`` (CPU)."""
    if not 1 <= samples <= block:
        raise ValueError(f"samples per block must be in [1, {block}], got {samples}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + salt)
    picks = torch.rand(heads, block, generator=gen).argsort(dim=-1)[:, :samples]
    return picks.sort(dim=-1).values.to(torch.int32)


def sampled_positions(offsets: torch.Tensor, length: int, block: int) -> torch.Tensor:
    """Absolute sampled positions ``[heads, nblocks, samples]`` (int64) for a sequence of ``length``."""
    nblocks = math.ceil(length / block)
    start = torch.arange(nblocks, device=offsets.device) * block
    size = torch.clamp(length - start, max=block)
    return start[None, :, None] + offsets.long()[:, None, :] % size[None, :, None]


@triton.jit
def sample_major_source(r, G: tl.constexpr, S: tl.constexpr):
    """Gathered row ``r`` -> its index ``block * S + sample`` in the block-major list of sampled rows.

    Blocks are interleaved in groups of ``G``: row ``grp * G * S + s * G + j``
    holds sample ``s`` of block ``grp * G + j`` (``G = 1``: the identity).
    """
    return ((r // (G * S)) * G + r % G) * S + (r // G) % S


@triton.jit
def _gather_rows(
    SRC, POS, DST, DSC,
    ssb, ssh, ssl, ssd,
    bh0, hq, group, n, n_pad,
    D: tl.constexpr, BLOCK: tl.constexpr, FP8: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
):
    """DST[bh, r] = SRC[b, h // group, POS[h, i(r)]] where i(r) < n, zeros elsewhere up to n_pad (tiles load unmasked).

    ``i(r)`` = :func:`sample_major_source` (``S`` samples per block, blocks
    interleaved in groups of ``G``). ``FP8`` 1: DST holds e4m3 rows, each
    scaled to its own max (fp8_rows), and DSC[bh, r] the row's fp32 scale;
    2: one scale per block of ``S`` sampled rows, DSC[bh, block] (BLOCK a
    multiple of ``G * S``, so a program holds whole interleave groups).
    """
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bh = bh0 + pid_bh
    b = bh // hq
    h = bh % hq
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    dims = tl.arange(0, D).to(tl.int64)
    src_rows = sample_major_source(rows, G, S)
    ok = src_rows < n
    pos = tl.load(POS + h * n + src_rows, mask=ok, other=0).to(tl.int64)
    src = SRC + b.to(tl.int64) * ssb + (h // group).to(tl.int64) * ssh
    x = tl.load(src + pos[:, None] * ssl + dims[None, :] * ssd, mask=ok[:, None], other=0.0)
    dst = DST + pid_bh.to(tl.int64) * n_pad * D + rows.to(tl.int64)[:, None] * D + dims[None, :]
    if FP8 == 1:
        x, scale = quantize_tile(x, BLOCK, 1, D)
        tl.store(DSC + pid_bh.to(tl.int64) * n_pad + rows, scale, mask=rows < n_pad)
    if FP8 == 2:
        x, scale = _quantize_interleaved(x, BLOCK, G, S)
        blocks = pid * (BLOCK // S) + tl.arange(0, BLOCK // S)
        tl.store(DSC + pid_bh.to(tl.int64) * (n_pad // S) + blocks, scale)
    tl.store(dst, x, mask=(rows < n_pad)[:, None])


@triton.jit
def _quantize_interleaved(x, BLOCK: tl.constexpr, G: tl.constexpr, S: tl.constexpr):
    """Sample-major ``[BLOCK, D]`` rows -> (e4m3 rows, fp32 scales ``[BLOCK // S]`` in block order), one scale per block.

    Row ``g * G * S + s * G + j`` belongs to block ``g * G + j``; the same
    arithmetic as fp8_rows.quantize_tile with groups of S consecutive rows
    (block-major order), so both give the same bytes.
    """
    x = x.to(tl.float32)
    amax = tl.max(tl.reshape(tl.max(tl.abs(x), axis=1), [BLOCK // (G * S), S, G]), axis=1)  # [groups, G]
    inv = tl.where(amax > 0.0, 448.0 / tl.maximum(amax, 1e-30), 0.0)
    inv_rows = tl.reshape(tl.broadcast_to(tl.expand_dims(inv, 1), [BLOCK // (G * S), S, G]), [BLOCK])
    y = round_to_e4m3(x * inv_rows[:, None])
    return y.to(tl.float8e4nv), tl.reshape(amax, [BLOCK // S]) / 448.0


@triton.jit
def _sampled_rowmax(
    QS, KS, QD, KD, QPOS, KPOS, RMAX, MAXALL, QSC, KSC,
    bh0, hq, lq, n_rows, n_rows_pad, n_cols_pad, nkv, ld, qk_scale,
    BQ: tl.constexpr, BKV: tl.constexpr, SQ: tl.constexpr, SK: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOT_F32: tl.constexpr, TMA: tl.constexpr,
    FP8: tl.constexpr, G: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    KB: tl.constexpr = BLOCK_N // SK  # KV blocks per tile
    n_cols = nkv * SK
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows64 = rows.to(tl.int64)  # scratch offsets outgrow int32 on very long sequences
    dims = tl.arange(0, D)
    # gathered, zero-padded, contiguous rows: unmasked loads that pipeline well
    if TMA:  # QD / KD: tensor descriptors over the same buffers, [chunk * rows_pad, D]
        qt = QD.load([pid_bh * n_rows_pad + pid_m * BLOCK_M, 0])
    else:
        qt = tl.load(QS + pid_bh.to(tl.int64) * n_rows_pad * D + rows[:, None] * D + dims[None, :])
    if DOT_F32:
        qt = qt.to(tl.float32)
    row_scale = qk_scale
    if FP8:  # e4m3 rows with per-row scales (from _gather_rows): a zero row's 0 logits take any scale
        q_scale = tl.load(QSC + pid_bh.to(tl.int64) * n_rows_pad + rows)
        row_scale = qk_scale * tl.where(q_scale > 0.0, q_scale, 1.0)
    k_base = KS + pid_bh.to(tl.int64) * n_cols_pad * D
    out_base = RMAX + pid_bh.to(tl.int64) * n_rows * ld
    n_tiles = tl.cdiv(nkv, KB)
    if CAUSAL:
        h = (bh0 + pid_bh) % hq
        qpos = tl.load(QPOS + h * n_rows + rows, mask=rows < n_rows, other=-1)
        # KV blocks starting after the program's last query block are invisible
        last_row = tl.minimum(pid_m * BLOCK_M + BLOCK_M, n_rows) - 1
        last_q = tl.minimum((last_row // SQ) * BQ + BQ, lq) - 1
        n_tiles = tl.minimum(n_tiles, (last_q // BKV) // KB + 1)
    # running max per (row, tile slot): the cross-thread reduce over slots runs once, after the loop
    m_acc = tl.full([BLOCK_M, KB], float("-inf"), tl.float32)
    for t in range(0, n_tiles):
        cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
        if TMA:
            kt = KD.load([pid_bh * n_cols_pad + t * BLOCK_N, 0])
        else:
            kt = tl.load(k_base + cols[:, None] * D + dims[None, :])
        if DOT_F32:
            kt = kt.to(tl.float32)
        s = tl.dot(qt, tl.trans(kt))
        if FP8 == 1:  # per-row key scales before the max; per-block ones and the query row's after it (positive: they commute)
            s = s * tl.load(KSC + pid_bh.to(tl.int64) * n_cols_pad + cols)[None, :]
        if CAUSAL:
            src = sample_major_source(cols, G, SK)  # the gathered column's sampled key
            kpos = tl.load(KPOS + h * n_cols + src, mask=src < n_cols, other=2147483647)
            s = tl.where(kpos[None, :] <= qpos[:, None], s, float("-inf"))
        # Scaling by qk_scale > 0 commutes with the max (rounding is monotonic),
        # so scale the BLOCK_M x KB maxima, not the BLOCK_M x BLOCK_N logits.
        kvb = t * KB + tl.arange(0, KB)
        # sample-major columns (g, sample, j) -> block t * KB + g * G + j: the reduced axis
        # is the MMA accumulator's register axis, so the max needs no cross-lane shuffles
        bmax = tl.reshape(tl.max(tl.reshape(s, [BLOCK_M, BLOCK_N // (G * SK), SK, G]), axis=2), [BLOCK_M, KB])
        if FP8 == 2:  # a zero block (scale 0) has logits 0 or -inf: any positive scale keeps them
            k_scale = tl.load(KSC + pid_bh.to(tl.int64) * (n_cols_pad // SK) + kvb)
            bmax = bmax * tl.where(k_scale > 0.0, k_scale, 1.0)[None, :]
        if FP8:
            bmax = bmax * row_scale[:, None]
        else:
            bmax = bmax * row_scale
        bmax = tl.where((kvb < nkv)[None, :], bmax, float("-inf"))  # zero-padded keys past the end
        # columns nkv..ld-1 of a row are padding: writing -inf there keeps the mask row-uniform (vector stores)
        tl.store(out_base + rows64[:, None] * ld + kvb[None, :], bmax, mask=(rows < n_rows)[:, None])
        m_acc = tl.maximum(m_acc, bmax)
    tl.store(MAXALL + pid_bh.to(tl.int64) * n_rows + rows, tl.max(m_acc, axis=1), mask=rows < n_rows)


@triton.jit
def _block_max(
    RMAX, MAXALL, OUT,
    bh0, lq, nq, nkv, ld,
    BQ: tl.constexpr, BKV: tl.constexpr, SQ: tl.constexpr, BLOCK_J: tl.constexpr, CAUSAL: tl.constexpr,
):
    qb = tl.program_id(0)
    pj = tl.program_id(1)
    pid_bh = tl.program_id(2)
    n_rows = nq * SQ
    rows = qb * SQ + tl.arange(0, SQ).to(tl.int64)
    js = pj * BLOCK_J + tl.arange(0, BLOCK_J).to(tl.int64)
    valid = js < nkv
    if CAUSAL:
        # must match _sampled_rowmax's skipped tiles: only blocks starting by the query block's end
        valid = valid & (js * BKV <= tl.minimum(qb * BQ + BQ, lq) - 1)
    x = tl.load(RMAX + pid_bh.to(tl.int64) * n_rows * ld + rows[:, None] * ld + js[None, :], mask=valid[None, :], other=float("-inf"))
    m = tl.load(MAXALL + pid_bh.to(tl.int64) * n_rows + rows)
    ok = (x > float("-inf")) & (m > float("-inf"))[:, None]
    e = tl.where(ok, tl.exp2(x - tl.where(ok, m[:, None], 0.0)), 0.0)
    score = tl.max(e, axis=0)
    tl.store(OUT + (bh0 + pid_bh).to(tl.int64) * nq * nkv + qb * nkv + js, score, mask=js < nkv)


def _normalise_rows(scores: torch.Tensor) -> torch.Tensor:
    """Rows over their sums, in place; an all-zero row (scores are >= 0) stays 0 (0 / tiny)."""
    total = scores.sum(-1, keepdim=True)
    return scores.div_(total.clamp_(min=torch.finfo(torch.float32).tiny))


# (BLOCK_M, BLOCK_N, num_warps, num_stages) timed on the first call of a shape
# on CUDA, per head dim. BLOCK_M = 64 with 4 warps lets two programs share an
# SM, so one's max-reduce epilogue overlaps the other's MMAs; 256-wide tiles
# halve the Q reloads or the K reloads per FLOP (they spill at d=64, so only
# d=128 tries them). All compile for sm_90 without spills (tests/test_psa.py).
# A fifth field 1: load the tiles with TMA (tensor descriptors) instead of
# pointer loads (no address registers, asynchronous bulk copies); on an H200
# at 32k and 110k x 40 heads (d=128) TMA 128 x 128 / 8 warps won, 21% ahead
# of the best pointer-load config (results/reference/scorers_h200.json).
# BLOCK_N >= 128 everywhere, so 8 KV blocks of 16 samples interleave in one
# tile (key_interleave); a 128 x 64 tile, the slowest candidate in every
# H200 tuning record, would have forced 4.
_COMMON = ((128, 128, 8, 3), (128, 128, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3, 1), (64, 128, 4, 3, 1))
# 256 x 128 with TMA: half the K reloads from L2 of a 128-row tile (fits in
# registers since the per-block max stopped needing shuffles).
GPU_CONFIGS = {128: _COMMON + ((128, 256, 8, 3), (64, 256, 4, 3), (256, 128, 8, 3), (128, 256, 8, 3, 1), (256, 128, 8, 3, 1)), 64: _COMMON}
# fp8 operands take half the shared memory per stage: deeper pipelines fit (tried only in fp8).
FP8_EXTRA = ((64, 256, 4, 4), (64, 256, 4, 3, 1), (128, 128, 8, 4, 1))
INTERPRETER_CONFIG = (64, 64, 4, 1)
FP8_KEY_SCALES = ("row", "block")  # fp8 key-scale granularity: per sampled key row, per KV block of them
ROW_PAD = 256  # gathered rows are padded to a multiple of this (>= every BLOCK_M / BLOCK_N)


def gpu_candidates(dim: int, fp8: bool = False) -> list[tuple[int, ...]]:
    """GPU autotune candidates for head dim ``dim``; in fp8 a d=64 128 x 128 tile on 4 warps spills 16 B on sm_90, so it is left out.

    All fit sm_90's registers (no spills) and shared memory (tests/test_psa.py).
    """
    raw = list(GPU_CONFIGS.get(dim, _COMMON))
    if not fp8:  # 16-bit 128 x 256 tiles: 3 stages plus the scratch store's layout conversion pass sm_90's 227 KB
        raw = [(bm, bn, w, 2 if (bm, bn) == (128, 256) else st, *tma) for bm, bn, w, st, *tma in raw]
    if fp8 and dim <= 64:
        raw = [c for c in raw if not (c[0] * c[1] >= 128 * 128 and c[2] == 4)]
    if fp8 and dim >= 128:
        raw += list(FP8_EXTRA)
    return raw


def rowmax_configs(device: torch.device, dim: int, sk: int, tile: int | None = None, fp8: bool = False) -> list[dict[str, int]]:
    """Candidate launch configs of ``_sampled_rowmax`` (one when ``tile`` pins the tile or off the GPU)."""
    if tile is not None:
        raw = [(tile, tile, 8 if tile >= 128 else 4, 3)]
    elif device.type == "cuda" and not interpreting():
        raw = gpu_candidates(dim, fp8)
    else:
        raw = [INTERPRETER_CONFIG]
    out = []
    for bm, bn, warps, stages, *tma in raw:
        cfg = dict(BLOCK_M=bm, BLOCK_N=max(bn, sk), num_warps=warps, num_stages=stages, TMA=tma[0] if tma else 0)  # whole KV blocks per tile
        if cfg not in out:
            out.append(cfg)
    return out


def psa_importance(
    q: torch.Tensor,
    k: torch.Tensor,
    q_offsets: torch.Tensor,
    k_offsets: torch.Tensor,
    block_q: int = 128,
    block_kv: int = 64,
    causal: bool = False,
    scale: float | None = None,
    max_scratch_bytes: int = 1 << 30,
    tile: int | None = None,
    config: dict[str, int] | None = None,
    fp8: bool = False,
    interleave: int | None = None,
    fp8_key_scale: str = "block",
) -> torch.Tensor:
    """Sampled block importance with the Triton kernels, fp32 ``[B, Hq, NQ, NKV]``, rows summing to 1.

    ``fp8``: the gathered rows are stored as e4m3 (:mod:`spbench.kernels.
    fp8_rows` rounding) and multiplied on fp8 tensor cores (fp32
    accumulation): one scale per sampled query row, and per KV block of
    sampled key rows (``fp8_key_scale="block"``, the default: the scale
    multiplies the block's max, not every logit) or per sampled key row
    (``"row"``). :func:`psa_importance_reference` with the same ``fp8`` /
    ``fp8_key_scale`` scores the same quantized values.

    ``q_offsets`` ``[Hq, sq]`` / ``k_offsets`` ``[Hq, sk]``: sampled offsets
    within a block (see :func:`sample_offsets`); sq and sk powers of two.
    ``tile`` pins a square tile (``BLOCK_M = BLOCK_N = tile``) instead of
    the per-shape autotune (:mod:`spbench.kernels.score_tuning`), ``config``
    a whole launch config (see :func:`rowmax_configs`). ``interleave``:
    KV blocks per interleave group of the gathered keys (default
    :func:`key_interleave`; 1 = block-major, the layout before the
    sample-major one, kept for comparisons).
    """
    bsz, hq, lq, dim = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if k.dtype != q.dtype:
        raise ValueError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
    sq, sk = q_offsets.shape[1], k_offsets.shape[1]
    for name, n in (("query samples", sq), ("key samples", sk)):
        if n & (n - 1):
            raise ValueError(f"{name} per block must be a power of two, got {n}")
    nq, nkv = math.ceil(lq / block_q), math.ceil(lk / block_kv)
    n_rows, n_cols = nq * sq, nkv * sk
    if fp8_key_scale not in FP8_KEY_SCALES:
        raise ValueError(f"fp8_key_scale must be one of {', '.join(FP8_KEY_SCALES)}, got {fp8_key_scale!r}")
    fp8_mode = (1 + FP8_KEY_SCALES.index(fp8_key_scale)) if fp8 else 0  # the kernels' FP8 switch
    configs = [config] if config is not None else rowmax_configs(q.device, dim, sk, tile, fp8)
    group = key_interleave(sk, configs) if interleave is None else interleave
    if group < 1 or group & (group - 1) or any(c["BLOCK_N"] % (group * sk) for c in configs):
        raise ValueError(f"interleave must be a power of two with interleave * k_samples dividing BLOCK_N, got {group} x {sk}")
    pad = max(ROW_PAD, *(c["BLOCK_N"] for c in configs), *(c["BLOCK_M"] for c in configs))
    n_rows_pad, n_cols_pad = math.ceil(n_rows / pad) * pad, math.ceil(n_cols / pad) * pad
    # scratch row stride: 64-byte aligned rows holding whole tiles of KB blocks (the last tile's padding is written)
    align = max(16, *(c["BLOCK_N"] // sk for c in configs))
    ld = math.ceil(nkv / align) * align
    qk_scale = (dim**-0.5 if scale is None else scale) * LOG2E
    # absolute sampled positions, int32 [Hq, rows]: the gathers read them, causal masking compares them
    qpos = sampled_positions(q_offsets.to(q.device), lq, block_q).reshape(hq, n_rows).to(torch.int32)
    kpos = sampled_positions(k_offsets.to(q.device), lk, block_kv).reshape(hq, n_cols).to(torch.int32)
    out = torch.empty(bsz, hq, nq, nkv, dtype=torch.float32, device=q.device)
    row_dtype = FP8_DTYPE if fp8 else q.dtype
    row_bytes = (1 * dim + 4) if fp8 else q.element_size() * dim
    per_head = 4 * n_rows * (ld + 1) + row_bytes * (n_rows_pad + n_cols_pad)
    chunk = max(1, min(bsz * hq, max_scratch_bytes // per_head))
    rmax = torch.empty(chunk, n_rows, ld, dtype=torch.float32, device=q.device)
    max_all = torch.empty(chunk, n_rows, dtype=torch.float32, device=q.device)
    qs = torch.empty(chunk, n_rows_pad, dim, dtype=row_dtype, device=q.device)
    ks = torch.empty(chunk, n_cols_pad, dim, dtype=row_dtype, device=q.device)
    q_scale = torch.empty(chunk, n_rows_pad, dtype=torch.float32, device=q.device) if fp8 else max_all
    k_scale = torch.empty(chunk, n_cols_pad // (sk if fp8_mode == 2 else 1), dtype=torch.float32, device=q.device) if fp8 else max_all
    k_rows = max(64, group * sk) if fp8_mode == 2 else 64  # a per-block scale needs whole interleave groups
    dot_f32 = dot_in_fp32(q) or (fp8 and interpreting())
    key = (str(row_dtype), dim, sq, sk, block_q, block_kv, causal, lq.bit_length(), lk.bit_length(), group, fp8_mode)
    block_j = 128
    for bh0 in range(0, bsz * hq, chunk):
        n_bh = min(chunk, bsz * hq - bh0)
        _gather_rows[(n_rows_pad // 64, n_bh)](q, qpos, qs, q_scale, *q.stride(), bh0, hq, 1, n_rows, n_rows_pad, D=dim, BLOCK=64, FP8=min(fp8_mode, 1), G=1, S=sq)
        _gather_rows[(n_cols_pad // k_rows, n_bh)](
            k, kpos, ks, k_scale, *k.stride(), bh0, hq, hq // hkv, n_cols, n_cols_pad, D=dim, BLOCK=k_rows, FP8=fp8_mode, G=group, S=sk, num_warps=4 if k_rows <= 64 else 8,
        )

        def launch(cfg, bh0=bh0, n_bh=n_bh):
            qd, kd = qs, ks  # unused placeholders unless TMA
            if cfg.get("TMA"):
                qd = TensorDescriptor.from_tensor(qs.view(-1, dim), [cfg["BLOCK_M"], dim])
                kd = TensorDescriptor.from_tensor(ks.view(-1, dim), [cfg["BLOCK_N"], dim])
            _sampled_rowmax[(triton.cdiv(n_rows, cfg["BLOCK_M"]), n_bh)](
                qs, ks, qd, kd, qpos, kpos, rmax, max_all, q_scale, k_scale,
                bh0, hq, lq, n_rows, n_rows_pad, n_cols_pad, nkv, ld, qk_scale,
                BQ=block_q, BKV=block_kv, SQ=sq, SK=sk, D=dim, CAUSAL=causal, DOT_F32=dot_f32, FP8=fp8_mode, G=group, **cfg,
            )

        cfg = configs[0] if len(configs) == 1 else score_tuning.pick("psa_rowmax", key, configs, launch, q.device)
        launch(cfg)
        _block_max[(nq, triton.cdiv(nkv, block_j), n_bh)](
            rmax, max_all, out, bh0, lq, nq, nkv, ld,
            BQ=block_q, BKV=block_kv, SQ=sq, BLOCK_J=block_j, CAUSAL=causal, num_warps=4,
        )
    return _normalise_rows(out)


def _fp8_gathered(rows: torch.Tensor, group: int) -> torch.Tensor:
    """Gathered rows ``[B, N, D]`` as the fp8 scorer multiplies them: e4m3 with one scale per ``group`` rows, in fp32."""
    y, scale = quantize_rows(rows[:, None], group)
    return dequantize_rows(y, scale, rows.shape[1])[:, 0]


def psa_importance_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    q_offsets: torch.Tensor,
    k_offsets: torch.Tensor,
    block_q: int = 128,
    block_kv: int = 64,
    causal: bool = False,
    scale: float | None = None,
    fp8: bool = False,
    fp8_key_scale: str = "block",
) -> torch.Tensor:
    """Plain-PyTorch sampled importance (same definition), fp32 ``[B, Hq, NQ, NKV]``.

    Gathers the sampled rows and forms the full sampled score matrix per
    head (NQ*sq x NKV*sk): small shapes, or the CPU fallback. ``fp8``: the
    gathered rows are quantized as :func:`psa_importance` quantizes them
    (per query row; per KV block of key samples or per key row, see
    ``fp8_key_scale``) with :func:`spbench.kernels.fp8_rows.quantize_rows`.
    """
    bsz, hq, lq, dim = q.shape
    group = hq // k.shape[1]
    scale = dim**-0.5 if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qpos = sampled_positions(q_offsets.to(q.device), lq, block_q)  # [Hq, NQ, sq]
    kpos = sampled_positions(k_offsets.to(q.device), k.shape[2], block_kv)  # [Hq, NKV, sk]
    nq, sq = qpos.shape[1:]
    nkv, sk = kpos.shape[1:]
    out = torch.empty(bsz, hq, nq, nkv, dtype=torch.float32, device=q.device)
    for h in range(hq):
        qs = q[:, h, qpos[h].flatten()].to(acc)  # [B, NQ*sq, D]
        ks = k[:, h // group, kpos[h].flatten()].to(acc)  # [B, NKV*sk, D]
        if fp8:
            qs, ks = _fp8_gathered(qs, 1), _fp8_gathered(ks, sk if fp8_key_scale == "block" else 1)
        s = torch.matmul(qs, ks.transpose(-1, -2)) * scale
        if causal:
            s = s.masked_fill(kpos[h].flatten()[None, :] > qpos[h].flatten()[:, None], float("-inf"))
        per_block = s.view(bsz, nq * sq, nkv, sk).amax(-1)  # [B, NQ*sq, NKV]
        row_max = per_block.amax(-1, keepdim=True)
        e = torch.exp(per_block - row_max).nan_to_num(0.0)  # -inf - -inf -> 0
        out[:, h] = e.view(bsz, nq, sq, nkv).amax(2).float()
    return _normalise_rows(out)
