"""Merging the parts of split work items into the output (the Gluon executor's last-round balancing).

A persistent grid of G programs over N work items runs ceil(N / G) rounds;
when the last round is short (N % G items), the Gluon kernel can split each
of those items' tiles into ``parts`` consecutive ranges run by different
programs (:func:`spbench.kernels.pyramid_gluon.split_parts`). Each part
stores its rows normalised by its own softmax sum (fp32) and its
log2-sum-exp (-inf where it saw nothing); this kernel combines them,
``O = sum_j 2^(l_j - M) O_j / sum_j 2^(l_j - M)`` with ``M = max_j l_j``,
then applies the epilogue the kernel would have (row_scale, compensation,
the natural-log LSE; rows that saw nothing give zeros before it).

Part buffers: ``part_o`` ``[n_split * parts * 128, D]`` fp32 and ``part_l``
``[n_split * parts * 128]``, item ``n_whole + i``'s part j at rows
``(i * parts + j) * 128``.
"""

from __future__ import annotations

import torch

from spbench.kernels.gluon_attn import BLOCK_M as ITEM_ROWS  # query rows per work item

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None

if triton is not None:

    @triton.jit
    def _merge_kernel(
        PartO, PartL, Out, Lse, RowScale, Comp,
        n_whole, n_m, num_heads, num_qb, q_len, so_b, so_h, so_l,
        PARTS: tl.constexpr, D: tl.constexpr, BLOCK_Q: tl.constexpr, ROWS: tl.constexpr,
        HAS_SCALE: tl.constexpr, HAS_COMP: tl.constexpr, RETURN_LSE: tl.constexpr,
    ):
        """One program per split item."""
        i = tl.program_id(0)
        item = n_whole + i
        pid_m = item % n_m
        bh = item // n_m
        b = bh // num_heads
        h = bh % num_heads
        r = tl.arange(0, ROWS)
        d = tl.arange(0, D)
        first = i.to(tl.int64) * PARTS * ROWS
        m = tl.full([ROWS], float("-inf"), tl.float32)
        for j in tl.static_range(PARTS):
            m = tl.maximum(m, tl.load(PartL + first + j * ROWS + r))
        m_safe = tl.where(m == float("-inf"), 0.0, m)  # no part saw the row: every weight is 0
        acc = tl.zeros([ROWS, D], tl.float32)
        w_sum = tl.zeros([ROWS], tl.float32)
        for j in tl.static_range(PARTS):
            w = tl.exp2(tl.load(PartL + first + j * ROWS + r) - m_safe)
            acc += w[:, None] * tl.load(PartO + (first + j * ROWS + r)[:, None] * D + d[None, :])
            w_sum += w
        seen = w_sum > 0.0
        out = acc / tl.where(seen, w_sum, 1.0)[:, None]
        row = bh.to(tl.int64) * num_qb + (pid_m * ROWS) // BLOCK_Q  # the schedule row (row_scale, compensation)
        if HAS_SCALE:
            out = out * tl.load(RowScale + row)
        if HAS_COMP:
            out = out + tl.load(Comp + row * D + d)[None, :]
        q_rows = pid_m * ROWS + r
        ok = q_rows < q_len
        ptr = Out + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + q_rows[:, None].to(tl.int64) * so_l + d[None, :]
        tl.store(ptr, out.to(Out.dtype.element_ty), mask=ok[:, None])
        if RETURN_LSE:
            lse = tl.where(seen, (m_safe + tl.log2(tl.where(seen, w_sum, 1.0))) * 0.6931471805599453, float("-inf"))
            tl.store(Lse + bh.to(tl.int64) * q_len + q_rows, lse, mask=ok)


def merge_parts(part_o: torch.Tensor, part_l: torch.Tensor, parts: int, n_whole: int, out: torch.Tensor,
                lse: torch.Tensor | None, row_scale: torch.Tensor | None, comp: torch.Tensor | None, block_q: int) -> None:
    """Write the split items' rows of ``out`` ([B, H, Lq, D]) and of ``lse`` ([B, H, Lq], if given) from their parts."""
    heads, q_len, d = out.shape[1:]
    n_split = part_l.numel() // (parts * ITEM_ROWS)
    if n_split == 0:
        return
    n_m = (q_len + ITEM_ROWS - 1) // ITEM_ROWS
    num_qb = (q_len + block_q - 1) // block_q
    _merge_kernel[(n_split,)](
        part_o, part_l, out, lse if lse is not None else part_l, row_scale if row_scale is not None else part_l,
        comp if comp is not None else part_l,
        n_whole, n_m, heads, num_qb, q_len, out.stride(0), out.stride(1), out.stride(2),
        PARTS=parts, D=d, BLOCK_Q=block_q, ROWS=ITEM_ROWS,
        HAS_SCALE=row_scale is not None, HAS_COMP=comp is not None, RETURN_LSE=lse is not None, num_warps=8,
    )


def merge_parts_reference(part_o, part_l, parts, n_whole, out, lse, row_scale, comp, block_q) -> None:
    """Plain-PyTorch :func:`merge_parts` (for tests)."""
    heads, q_len, d = out.shape[1:]
    n_m = -(-q_len // ITEM_ROWS)
    o = part_o.view(-1, parts, ITEM_ROWS, d).double()
    lg = part_l.view(-1, parts, ITEM_ROWS).double()
    m = lg.max(1).values
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w = torch.exp2(lg - m_safe[:, None])
    w_sum = w.sum(1)
    merged = (w[..., None] * o).sum(1) / torch.where(w_sum > 0, w_sum, torch.ones_like(w_sum))[..., None]
    for i in range(o.shape[0]):
        item = n_whole + i
        pid_m, bh = item % n_m, item // n_m
        b, h = bh // heads, bh % heads
        rows = slice(pid_m * ITEM_ROWS, min(q_len, (pid_m + 1) * ITEM_ROWS))
        n = rows.stop - rows.start
        qb = (pid_m * ITEM_ROWS) // block_q
        val = merged[i, :n]
        if row_scale is not None:
            val = val * row_scale[b, h, qb].double()
        if comp is not None:
            val = val + comp[b, h, qb].double()
        out[b, h, rows] = val.to(out.dtype)
        if lse is not None:
            seen = w_sum[i, :n] > 0
            lse[b, h, rows] = torch.where(seen, (m_safe[i, :n] + torch.log2(torch.where(seen, w_sum[i, :n], 1.0))) * 0.6931471805599453,
                                          torch.full_like(m_safe[i, :n], float("-inf"))).float()
