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

1. ``_sampled_rowmax``: one program per (64 sampled query rows, batch*head),
   looping over tiles of sampled keys: one ``tl.dot`` per tile, the max over
   each KV block's sampled keys written to scratch ``[rows, NKV]`` and the
   running max over all keys kept per row. Causal tiles past the program's
   last query are skipped.
2. ``_block_max``: one program per (query block, KV block range,
   batch*head): ``max_q exp(rowmax - row_max_all)``.

Scratch is NQ*sq x NKV fp32 per (batch, head); heads are processed in
chunks so it stays under ``max_scratch_bytes``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from spbench.kernels.antidiag import LOG2E, dot_in_fp32


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
def _sampled_rowmax(
    Q, K, QOFF, KOFF, RMAX, MAXALL,
    sqb, sqh, sql, sqd,
    skb, skh, skl, skd,
    bh0, hq, group, lq, lk, nq, nkv, qk_scale,
    BQ: tl.constexpr, BKV: tl.constexpr, SQ: tl.constexpr, SK: tl.constexpr,
    QB: tl.constexpr, KB: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, DOT_F32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bh = bh0 + pid_bh
    b = bh // hq
    h = bh % hq
    hk = h // group
    M: tl.constexpr = QB * SQ
    N: tl.constexpr = KB * SK
    n_rows = nq * SQ
    dims = tl.arange(0, D).to(tl.int64)
    # sampled query rows of this program; int64 so long sequences never overflow
    ridx = pid_m * M + tl.arange(0, M).to(tl.int64)
    qblk = ridx // SQ
    qoff = tl.load(QOFF + h * SQ + ridx % SQ)
    qstart = qblk * BQ
    qpos = qstart + qoff % tl.maximum(tl.minimum(lq - qstart, BQ), 1)
    row_ok = qblk < nq
    qt = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + qpos[:, None] * sql + dims[None, :] * sqd, mask=row_ok[:, None], other=0.0)
    if DOT_F32:
        qt = qt.to(tl.float32)
    cidx0 = tl.arange(0, N).to(tl.int64)
    koff = tl.load(KOFF + h * SK + cidx0 % SK)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    out_base = RMAX + pid_bh.to(tl.int64) * n_rows * nkv
    m_all = tl.full([M], float("-inf"), tl.float32)
    n_tiles = tl.cdiv(nkv, KB)
    if CAUSAL:
        # KV blocks starting after the program's last query position are invisible
        last_q = tl.minimum((pid_m * QB + QB) * BQ, lq) - 1
        n_tiles = tl.minimum(n_tiles, (last_q // BKV) // KB + 1)
    for t in range(0, n_tiles):
        kblk = t * KB + cidx0 // SK
        kstart = kblk * BKV
        kpos = kstart + koff % tl.maximum(tl.minimum(lk - kstart, BKV), 1)
        col_ok = kblk < nkv
        kt = tl.load(k_base + kpos[:, None] * skl + dims[None, :] * skd, mask=col_ok[:, None], other=0.0)
        if DOT_F32:
            kt = kt.to(tl.float32)
        s = tl.dot(qt, tl.trans(kt))
        kvb = t * KB + tl.arange(0, KB).to(tl.int64)
        if CAUSAL:
            valid = col_ok[None, :] & row_ok[:, None] & (kpos[None, :] <= qpos[:, None])
            bmax = tl.max(tl.reshape(tl.where(valid, s * qk_scale, float("-inf")), [M, KB, SK]), axis=2)
        else:
            # Scaling by qk_scale > 0 commutes with the max (rounding is
            # monotonic), so scale the M x KB maxima, not the M x N logits.
            # A KV block's samples are all valid or all not: mask per block.
            # Rows past the end are never stored and never reach m_all's store.
            bmax = tl.max(tl.reshape(s, [M, KB, SK]), axis=2) * qk_scale
            bmax = tl.where((kvb < nkv)[None, :], bmax, float("-inf"))
        tl.store(out_base + ridx[:, None] * nkv + kvb[None, :], bmax, mask=row_ok[:, None] & (kvb < nkv)[None, :])
        m_all = tl.maximum(m_all, tl.max(bmax, axis=1))
    tl.store(MAXALL + pid_bh.to(tl.int64) * n_rows + ridx, m_all, mask=row_ok)


@triton.jit
def _block_max(
    RMAX, MAXALL, OUT,
    bh0, lq, nq, nkv,
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
    x = tl.load(RMAX + pid_bh.to(tl.int64) * n_rows * nkv + rows[:, None] * nkv + js[None, :], mask=valid[None, :], other=float("-inf"))
    m = tl.load(MAXALL + pid_bh.to(tl.int64) * n_rows + rows)
    ok = (x > float("-inf")) & (m > float("-inf"))[:, None]
    e = tl.where(ok, tl.exp2(x - tl.where(ok, m[:, None], 0.0)), 0.0)
    score = tl.max(e, axis=0)
    tl.store(OUT + (bh0 + pid_bh).to(tl.int64) * nq * nkv + qb * nkv + js, score, mask=js < nkv)


def _normalise_rows(scores: torch.Tensor) -> torch.Tensor:
    """Rows over their sums, in place; an all-zero row (scores are >= 0) stays 0 (0 / tiny)."""
    total = scores.sum(-1, keepdim=True)
    return scores.div_(total.clamp_(min=torch.finfo(torch.float32).tiny))


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
) -> torch.Tensor:
    """Sampled block importance with the Triton kernels, fp32 ``[B, Hq, NQ, NKV]``, rows summing to 1.

    ``q_offsets`` ``[Hq, sq]`` / ``k_offsets`` ``[Hq, sk]``: sampled offsets
    within a block (see :func:`sample_offsets`); sq and sk powers of two.
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
    # 128 sampled rows x 128 sampled keys per tile on the GPU, 64 x 64 under
    # the interpreter (never below 16, the tl.dot minimum).
    tile = tile or (128 if q.is_cuda else 64)
    qb_per_prog = max(1, tile // sq)
    kb_per_tile = max(1, tile // sk)
    qk_scale = (dim**-0.5 if scale is None else scale) * LOG2E
    q_off = q_offsets.to(device=q.device, dtype=torch.int32).contiguous()
    k_off = k_offsets.to(device=q.device, dtype=torch.int32).contiguous()
    out = torch.empty(bsz, hq, nq, nkv, dtype=torch.float32, device=q.device)
    n_rows = nq * sq
    per_head = 4 * n_rows * (nkv + 1)
    chunk = max(1, min(bsz * hq, max_scratch_bytes // per_head))
    rmax = torch.empty(chunk, n_rows, nkv, dtype=torch.float32, device=q.device)
    max_all = torch.empty(chunk, n_rows, dtype=torch.float32, device=q.device)
    block_j = 64
    for bh0 in range(0, bsz * hq, chunk):
        n_bh = min(chunk, bsz * hq - bh0)
        _sampled_rowmax[(triton.cdiv(nq, qb_per_prog), n_bh)](
            q, k, q_off, k_off, rmax, max_all,
            *q.stride(), *k.stride(),
            bh0, hq, hq // hkv, lq, lk, nq, nkv, qk_scale,
            BQ=block_q, BKV=block_kv, SQ=sq, SK=sk, QB=qb_per_prog, KB=kb_per_tile, D=dim,
            CAUSAL=causal, DOT_F32=dot_in_fp32(q), num_warps=8 if tile >= 128 else 4,
        )
        _block_max[(nq, triton.cdiv(nkv, block_j), n_bh)](
            rmax, max_all, out, bh0, lq, nq, nkv,
            BQ=block_q, BKV=block_kv, SQ=sq, BLOCK_J=block_j, CAUSAL=causal,
        )
    return _normalise_rows(out)


def psa_importance_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    q_offsets: torch.Tensor,
    k_offsets: torch.Tensor,
    block_q: int = 128,
    block_kv: int = 64,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Plain-PyTorch sampled importance (same definition), fp32 ``[B, Hq, NQ, NKV]``.

    Gathers the sampled rows and forms the full sampled score matrix per
    head (NQ*sq x NKV*sk): small shapes, or the CPU fallback.
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
        s = torch.matmul(qs, ks.transpose(-1, -2)) * scale
        if causal:
            s = s.masked_fill(kpos[h].flatten()[None, :] > qpos[h].flatten()[:, None], float("-inf"))
        per_block = s.view(bsz, nq * sq, nkv, sk).amax(-1)  # [B, NQ*sq, NKV]
        row_max = per_block.amax(-1, keepdim=True)
        e = torch.exp(per_block - row_max).nan_to_num(0.0)  # -inf - -inf -> 0
        out[:, h] = e.view(bsz, nq, sq, nkv).amax(2).float()
    return _normalise_rows(out)
