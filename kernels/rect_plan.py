"""Fused Triton planning kernels of Rectified SpaAttn (no text tokens).

The torch planner in :mod:`spbench.methods.rectified` issues ~90 small
kernels per plan; at 32k tokens the plan is host-bound (launch overhead, not
device work). These kernels do the same work in a handful of launches:

1. :func:`pooled_stats` - one launch for the block means of Q, K, V and the
   mean absolute deviations of Q and K, written straight into stacked buffers
   so that one batched matmul gives q.k, dq.k and q.dk for every block pair;
2. :func:`row_scores` - per (batch, head, query block) row: the IPAR logits
   (+ln of the key block's token count), the causal mask, the softmax P_hat
   and the rank key (forced blocks first) that ``torch.sort`` orders;
3. :func:`row_select` - per row: the critical set (first ``n_keep`` ranks,
   or more by the cumulative-p rule), GAPR compensation, the compensation
   weights and row scale, the CSR row (indices ascending) and, by atomics,
   the plan-wide sums the host reads in its one sync.

Every kernel mirrors a step of the torch planner and is tested against it
(tests/test_rectified.py).
"""

from __future__ import annotations

import torch

try:  # Triton is optional (the torch planner still works without it).
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None

from spbench.kernels.block_stats import chunk_rows

if triton is not None:
    from spbench.kernels.block_stats import pool_rows

    @triton.jit
    def _pooled_stats_kernel(
        Q, K, V, QS, KS, VM,
        sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd,
        HQ, HKV, NBHK, LQ, LK, NQ, NK, D, DV, q_plane, k_plane,
        BLOCK: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # axis 2 picks the tensor: 0 = Q (mean, mad, mean), 1 = K (mean, mean, mad), 2 = V (mean)
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        which = tl.program_id(2)
        dims = tl.arange(0, BLOCK_D)
        start = pid_n * BLOCK
        if which == 0:
            if pid_n < NQ:  # axis 1 spans B * Hq
                b = pid_bh // HQ
                h = pid_bh % HQ
                dmask = dims < D
                mean, mad = pool_rows(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, sql, sqd, start, LQ, dims, dmask, BLOCK, CHUNK, BLOCK_D, True)
                out = QS + (pid_bh.to(tl.int64) * NQ + pid_n) * D + dims
                tl.store(out, mean, mask=dmask)
                tl.store(out + q_plane, mad, mask=dmask)
                tl.store(out + 2 * q_plane, mean, mask=dmask)
        elif which == 1:
            if (pid_n < NK) & (pid_bh < NBHK):
                b = pid_bh // HKV
                h = pid_bh % HKV
                dmask = dims < D
                mean, mad = pool_rows(K + b.to(tl.int64) * skb + h.to(tl.int64) * skh, skl, skd, start, LK, dims, dmask, BLOCK, CHUNK, BLOCK_D, True)
                out = KS + (pid_bh.to(tl.int64) * NK + pid_n) * D + dims
                tl.store(out, mean, mask=dmask)
                tl.store(out + k_plane, mean, mask=dmask)
                tl.store(out + 2 * k_plane, mad, mask=dmask)
        else:
            if (pid_n < NK) & (pid_bh < NBHK):
                b = pid_bh // HKV
                h = pid_bh % HKV
                dmask = dims < DV
                mean, _ = pool_rows(V + b.to(tl.int64) * svb + h.to(tl.int64) * svh, svl, svd, start, LK, dims, dmask, BLOCK, CHUNK, BLOCK_D, False)
                tl.store(VM + (pid_bh.to(tl.int64) * NK + pid_n) * DV + dims, mean, mask=dmask)

    @triton.jit
    def _row_scores_kernel(
        S, FORCED, PHAT, KEY,
        NQ, NK, LQ, LK, scale,
        BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, ANY_FORCED: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)  # (b * Hq + h) * NQ + i
        i = row % NQ
        j = tl.arange(0, BLOCK_N)
        inside = j < NK
        dots = tl.load(S + row * NK + j, mask=inside, other=0.0)
        count = tl.minimum(LK - j * BLOCK, BLOCK).to(tl.float32)  # the key block's tokens (IPAR weight)
        logits = dots * scale + tl.log(tl.where(inside, count, 1.0))
        visible = inside
        if CAUSAL:  # some key of block j is visible to the query block's last query
            q_last = tl.minimum(i * BLOCK + BLOCK, LQ) - 1
            visible = visible & (j * BLOCK <= q_last)
        logits = tl.where(visible, logits, float("-inf"))
        e = tl.exp(logits - tl.max(logits, axis=0))
        p_hat = e / tl.sum(e, axis=0)
        tl.store(PHAT + row * NK + j, p_hat, mask=inside)
        key = p_hat
        if ANY_FORCED:  # forced blocks rank first, invisible ones last
            forced = tl.load(FORCED + i * NK + j, mask=inside, other=0).to(tl.float32)
            key = tl.where(visible, p_hat + 2.0 * forced, -1.0)
        tl.store(KEY + row * NK + j, key, mask=inside)

    @triton.jit
    def _row_select_kernel(
        S, PHAT, ORDER, NKEEP, AREA, CRIT, W, ROWSCALE, COUNTS, INDICES, LEVELS, ACC_I, ACC_F,
        NQ, NK, LQ, LK, s_plane, p,
        BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, USE_P: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        i = row % NQ
        j = tl.arange(0, BLOCK_N)
        inside = j < NK
        base = row * NK
        order = tl.load(ORDER + base + j, mask=inside, other=0)
        n_keep = tl.load(NKEEP + i)
        if USE_P:  # cumulative-p rule: the rank prefix whose P_hat mass stays <= p
            mass = tl.cumsum(tl.load(PHAT + base + order, mask=inside, other=0.0), axis=0)
            n_keep = tl.maximum(n_keep, tl.sum((inside & (mass <= p + 1e-6)).to(tl.int64), axis=0))
        # rank r -> block order[r]: scatter the keep flags, then read them back in block order
        tl.store(CRIT + base + order, (j < n_keep).to(tl.int8), mask=inside)
        tl.debug_barrier()
        critical = (tl.load(CRIT + base + j, mask=inside, other=0) != 0) & inside
        full = inside
        if CAUSAL:  # visible blocks; compensate only blocks every query of the row sees fully
            q_first = i * BLOCK
            critical = critical & (j * BLOCK <= tl.minimum(q_first + BLOCK, LQ) - 1)
            full = full & (tl.minimum(j * BLOCK + BLOCK, LK) - 1 <= q_first)
        # GAPR: gain |q.k| > error |dq.k| + |q.dk|
        gain = tl.abs(tl.load(S + base + j, mask=inside, other=0.0))
        error = tl.abs(tl.load(S + s_plane + base + j, mask=inside, other=0.0)) + tl.abs(tl.load(S + 2 * s_plane + base + j, mask=inside, other=0.0))
        compensated = (gain > error) & full & ~critical
        p_hat = tl.load(PHAT + base + j, mask=inside, other=0.0)
        weights = tl.where(compensated, p_hat, 0.0)
        tl.store(W + base + j, weights, mask=inside)
        row_scale = 1.0 - tl.sum(weights, axis=0)
        tl.store(ROWSCALE + row, row_scale)
        # CSR row: critical blocks ascending in slots 0.., zero padding after
        n_crit = tl.sum(critical.to(tl.int32), axis=0)
        slot = tl.cumsum(critical.to(tl.int32), axis=0) - 1
        tl.store(COUNTS + row, n_crit)
        tl.store(INDICES + base + j, tl.zeros([BLOCK_N], dtype=tl.int32), mask=inside & (j >= n_crit))
        tl.store(INDICES + base + slot, j.to(tl.int32), mask=critical)
        tl.store(LEVELS + base + j, (j < n_crit).to(tl.int8), mask=inside)
        # plan-wide sums for the host's one sync (integers are exact in fp64)
        area = tl.sum(tl.where(critical, tl.load(AREA + i * NK + j, mask=inside, other=0), 0), axis=0)
        tl.atomic_max(ACC_I, n_crit.to(tl.int64))
        tl.atomic_add(ACC_F + 1, n_crit.to(tl.float64))
        tl.atomic_add(ACC_F + 2, tl.sum(compensated.to(tl.int32), axis=0).to(tl.float64))
        tl.atomic_add(ACC_F + 3, row_scale.to(tl.float64))
        tl.atomic_add(ACC_F + 4, 8.0 * area.to(tl.float64))


def pooled_stats(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int):
    """One launch: ``(qs [3, B, Hq, NQ, D], ks [3, B, Hkv, NK, D], vm [B, Hkv, NK, Dv])`` fp32.

    ``qs`` = (q mean, q mad, q mean), ``ks`` = (k mean, k mean, k mad): one
    batched matmul of the two gives (q.k, dq.k, q.dk) per block pair.
    """
    bsz, hq, lq, d = q.shape
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[-1]
    nq, nk = -(-lq // block), -(-lk // block)
    qs = torch.empty(3, bsz, hq, nq, d, dtype=torch.float32, device=q.device)
    ks = torch.empty(3, bsz, hkv, nk, d, dtype=torch.float32, device=q.device)
    vm = torch.empty(bsz, hkv, nk, dv, dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(max(d, dv, 16))
    chunk = chunk_rows(block, block_d)
    _pooled_stats_kernel[(max(nq, nk), bsz * hq, 3)](
        q, k, v, qs, ks, vm,
        *q.stride(), *k.stride(), *v.stride(),
        hq, hkv, bsz * hkv, lq, lk, nq, nk, d, dv, qs[0].numel(), ks[0].numel(),
        BLOCK=block, CHUNK=chunk, BLOCK_D=block_d,
        num_warps=8 if chunk * block_d >= 128 * 128 else 4,
    )
    return qs, ks, vm


def row_scores(s: torch.Tensor, forced: torch.Tensor | None, q_len: int, kv_len: int, block: int, scale: float, causal: bool):
    """``(p_hat, rank_key)`` ``[B, Hq, NQ, NK]`` fp32 from the q.k plane ``s[0]`` of :func:`pooled_stats`' product."""
    _, bsz, hq, nq, nk = s.shape
    p_hat = torch.empty(bsz, hq, nq, nk, dtype=torch.float32, device=s.device)
    key = torch.empty_like(p_hat)
    _row_scores_kernel[(bsz * hq * nq,)](
        s, forced if forced is not None else p_hat, p_hat, key,
        nq, nk, q_len, kv_len, float(scale),
        BLOCK=block, BLOCK_N=triton.next_power_of_2(nk), CAUSAL=causal, ANY_FORCED=forced is not None,
        num_warps=4 if nk <= 2048 else 8,
    )
    return p_hat, key


def row_select(s, p_hat, order, n_keep, area, q_len: int, kv_len: int, block: int, causal: bool, p: float):
    """Critical set, GAPR weights, row scale, CSR rows and the plan-wide sums (see the module docstring).

    Returns ``(weights, row_scale, counts, indices, levels, acc)``: fp32
    ``[B, Hq, NQ, NK]``, fp32 ``[B, Hq, NQ]``, int32 ``[B, Hq, NQ]``, int32 and
    int8 ``[B, Hq, NQ, NK]`` (the first ``counts`` slots valid, zeros after),
    and int64 ``[5]``: max count, then (as float64 bits) critical blocks,
    compensated blocks, sum of row scales, planned area x 8.
    """
    _, bsz, hq, nq, nk = s.shape
    dev = s.device
    weights = torch.empty(bsz, hq, nq, nk, dtype=torch.float32, device=dev)
    row_scale = torch.empty(bsz, hq, nq, dtype=torch.float32, device=dev)
    counts = torch.empty(bsz, hq, nq, dtype=torch.int32, device=dev)
    indices = torch.empty(bsz, hq, nq, nk, dtype=torch.int32, device=dev)
    levels = torch.empty(bsz, hq, nq, nk, dtype=torch.int8, device=dev)
    scratch = torch.empty(bsz, hq, nq, nk, dtype=torch.int8, device=dev)
    acc = torch.zeros(5, dtype=torch.int64, device=dev)  # the one fill: atomics need zeros
    _row_select_kernel[(bsz * hq * nq,)](
        s, p_hat, order, n_keep, area, scratch, weights, row_scale, counts, indices, levels, acc, acc.view(torch.float64),
        nq, nk, q_len, kv_len, s[0].numel(), float(p),
        BLOCK=block, BLOCK_N=triton.next_power_of_2(nk), CAUSAL=causal, USE_P=p > 0,
        num_warps=4 if nk <= 2048 else 8,
    )
    return weights, row_scale, counts, indices, levels, acc
