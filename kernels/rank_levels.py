"""Rank-bound level assignment without a sort: one Triton program per (query block, batch*head).

The count-based rules (psa ``mode="topk"`` and budgets) give each row
cumulative rank bounds n1 <= n2 <= n4 <= n8: the first n1 blocks in rank
order are level 1, the next up to n2 level 2, ..., the rest skipped. Rank
order is forced blocks first, then visible blocks by descending score,
invisible blocks last; ties go to the lower KV index (a stable sort).

A full sort of the ``[B, H, NQ, NKV]`` scores and an inverse permutation
(scatter with int64 indices) are not needed for that: per row it suffices
to know, for each bound n, the n-th largest key v and how many of the
blocks equal to v still fit. So each program

1. loads its row once and maps it to int32 keys that order like the
   scores (non-negative floats order like their bit patterns; forced blocks
   get the bits of +inf, invisible ones -1);
2. finds the four n-th largest keys at once by bisection over the int32
   key range (32 steps, each one compare and one row reduction);
3. counts each block in bound p when its key is above v_p, or equal to v_p
   with fewer than (n_p - #above) equal keys at lower indices (an inclusive
   cumsum of the equal mask), and writes the level in block order.

So the work is one read of the scores and one int8 write of the level map,
no int64 index tensor, no sort, no scatter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FORCED_KEY = tl.constexpr(0x7F800000)  # bits of +inf: above every finite non-negative score
TOP = tl.constexpr(0x7F800001)  # bisection upper end: no key reaches it


@triton.jit
def _rank_levels(
    S, FORCED, VISIBLE, BOUNDS, OUT,
    nq, nkv,
    NKV_P2: tl.constexpr, CHECK_VISIBLE: tl.constexpr,
):
    row = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    js = tl.arange(0, NKV_P2)
    inb = js < nkv
    base = (bh * nq + row) * nkv
    x = tl.load(S + base + js, mask=inb, other=0.0)
    # -0.0 (and any negative score, which callers do not pass) counts as 0
    key = tl.maximum(x.to(tl.int32, bitcast=True), 0)
    forced = tl.load(FORCED + row * nkv + js, mask=inb, other=0) != 0
    key = tl.where(forced, FORCED_KEY, key)
    live = inb
    if CHECK_VISIBLE:
        live = live & (tl.load(VISIBLE + row * nkv + js, mask=inb, other=0) != 0)
    key = tl.where(live, key, -1)

    four = tl.arange(0, 4)
    n = tl.load(BOUNDS + row * 4 + four)  # [4] int32: n1, n2, n4, n8 (n_p <= visible blocks)
    # invariant: count(key >= lo) >= n (true at lo = -1: every lane), count(key >= hi) < n unless n = 0
    lo = tl.full([4], -1, tl.int32)
    hi = tl.full([4], TOP, tl.int32)
    for _ in range(32):  # hi - lo starts below 2^31 and halves each step
        mid = lo + (hi - lo) // 2
        cnt = tl.sum((key[None, :] >= mid[:, None]).to(tl.int32), axis=1)
        ok = cnt >= n
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    above = key[None, :] > lo[:, None]  # [4, NKV_P2]
    need = n - tl.sum(above.to(tl.int32), axis=1)  # equal keys still inside bound p (0 when n_p = 0)
    equal = key[None, :] == lo[:, None]
    eq_rank = tl.cumsum(equal.to(tl.int32), axis=1)  # 1-based among equal keys, by index
    inside = above | (equal & (eq_rank <= need[:, None]))
    bucket = 4 - tl.sum(inside.to(tl.int32), axis=0)  # bounds this block is not inside
    level = tl.where(bucket >= 4, 0, 1 << bucket)
    tl.store(OUT + base + js, level.to(tl.int8), mask=inb)


def rank_levels(scores: torch.Tensor, visible: torch.Tensor, forced: torch.Tensor, bounds: torch.Tensor, all_visible: bool = False) -> torch.Tensor:
    """Block-order int8 levels ``[B, H, NQ, NKV]`` from rank bounds (see the module docstring).

    ``scores`` fp32 ``[B, H, NQ, NKV]``, finite and non-negative;
    ``visible`` / ``forced`` bool ``[NQ, NKV]``; ``bounds`` int ``[NQ, 4]``
    cumulative, non-decreasing, at most the row's visible blocks and at
    least its forced ones (the bounds :func:`spbench.methods._select.level_from_rank`
    takes). Same result as a stable descending sort of the forced-first keys
    followed by ``level_from_rank`` and an unsort.
    """
    if scores.dim() != 4:
        raise ValueError(f"scores must be [B, H, NQ, NKV], got shape {tuple(scores.shape)}")
    bsz, heads, nq, nkv = scores.shape
    if tuple(visible.shape) != (nq, nkv) or tuple(forced.shape) != (nq, nkv) or tuple(bounds.shape) != (nq, 4):
        raise ValueError(f"visible/forced must be [{nq}, {nkv}] and bounds [{nq}, 4], got {tuple(visible.shape)}, {tuple(forced.shape)}, {tuple(bounds.shape)}")
    scores = scores.float().contiguous()
    out = torch.empty(scores.shape, dtype=torch.int8, device=scores.device)
    if out.numel() == 0:
        return out
    _rank_levels[(nq, bsz * heads)](
        scores, forced.contiguous().view(torch.uint8), visible.contiguous().view(torch.uint8), bounds.to(torch.int32).contiguous(), out,
        nq, nkv, NKV_P2=triton.next_power_of_2(nkv), CHECK_VISIBLE=not all_visible, num_warps=4 if nkv <= 2048 else 8,
    )
    return out
