"""Block-selection helpers shared by the planners (block, xattention, psa, ...).

Everything here is batched over ``[B, H, NQ, NKV]`` score maps on the
scores' device: no Python loops over heads or blocks and no host syncs.
Masks that depend only on positions (causal visibility, forced blocks,
per-row budget counts) are ``[NQ, NKV]`` / ``[NQ]`` tensors broadcast over
batch and heads.

The common pattern of a planner::

    visible = block_visibility(...)                   # [NQ, NKV] bool
    forced = forced_blocks(..., diagonal=, sink=)      # [NQ, NKV] bool
    order, ranked = rank_blocks(scores, visible, forced)
    keep = keep_by_mass(ranked, tau, n_forced, n_visible)   # in rank order
    levels = unsort(keep.to(torch.int8), order)        # back to block order

Rank order puts forced blocks first (so they count toward a mass
threshold), then visible blocks by descending score, invisible blocks last.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from spbench.plan import block_areas, num_blocks


def block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of every block of ``block`` rows along dim 2, float32 ``[B, H, ceil(L/block), D]``.

    The ragged tail block averages only the rows it has. Full blocks are a
    reshape of a view (no copy of ``x``); the reduction accumulates in fp32.
    """
    bsz, heads, length, dim = x.shape
    full = length // block
    out = torch.empty(bsz, heads, num_blocks(length, block), dim, dtype=torch.float32, device=x.device)
    if full:
        out[:, :, :full] = x[:, :, : full * block].reshape(bsz, heads, full, block, dim).mean(3, dtype=torch.float32)
    if full * block < length:
        out[:, :, full] = x[:, :, full * block :].mean(2, dtype=torch.float32)
    return out


def block_visibility(q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool, device=None) -> torch.Tensor:
    """``[NQ, NKV]`` bool: the block holds at least one visible (query, key) pair."""
    return block_areas(q_len, kv_len, block_q, block_kv, causal, device) > 0


def diagonal_blocks(q_len: int, kv_len: int, block_q: int, block_kv: int, device=None) -> torch.Tensor:
    """``[NQ, NKV]`` bool: the KV blocks whose positions overlap the query block's.

    With block_q = 2 * block_kv that is two KV blocks per query block; in
    causal mode they are exactly the blocks holding each query's own key, so
    forcing them guarantees every query sees at least itself. A query block
    that starts past the last key (Lq > Lk) gets the last KV block.
    """
    nq, nk = num_blocks(q_len, block_q), num_blocks(kv_len, block_kv)
    q0 = torch.arange(nq, device=device) * block_q
    q1 = torch.clamp(q0 + block_q, max=q_len)
    k0 = torch.arange(nk, device=device) * block_kv
    k1 = torch.clamp(k0 + block_kv, max=kv_len)
    overlap = (k0[None, :] < q1[:, None]) & (k1[None, :] > q0[:, None])
    beyond = (q0 >= kv_len)[:, None] & (torch.arange(nk, device=device) == nk - 1)[None, :]
    return overlap | beyond


def forced_blocks(
    q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool, diagonal: bool, sink: bool, device=None
) -> torch.Tensor:
    """``[NQ, NKV]`` bool: blocks a planner must keep (diagonal and/or first KV block), visible ones only."""
    visible = block_visibility(q_len, kv_len, block_q, block_kv, causal, device)
    forced = torch.zeros_like(visible)
    if diagonal:
        forced |= diagonal_blocks(q_len, kv_len, block_q, block_kv, device)
    if sink:
        forced[:, 0] = True
    return forced & visible


def rank_blocks(
    scores: torch.Tensor,
    visible: torch.Tensor,
    forced: torch.Tensor,
    ranked: bool = True,
    all_visible: bool = False,
    any_forced: bool = True,
    stable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sort each row: forced blocks first, then visible blocks by descending score, invisible last.

    ``scores`` ``[..., NQ, NKV]`` (non-negative block scores), ``visible`` and
    ``forced`` broadcastable to it. Returns ``(order, ranked)``: the block
    index at each rank, and the scores in rank order with invisible blocks
    zeroed (so cumulative sums are shares of the visible mass); ``ranked``
    is None when not asked for (the count-based rules need only the order).
    ``all_visible`` / ``any_forced`` (host flags from :func:`layout`) skip
    the mask passes that would not change anything. ``stable``: equal
    scores keep KV-index order (psa's budget / topk rule: a deterministic tie order).
    """
    masked = scores.float()
    if not all_visible:
        masked = masked.masked_fill(~visible, 0.0)
        key = masked.masked_fill(~visible, float("-inf"))
    else:
        key = masked
    if any_forced:
        key = key.masked_fill(forced, float("inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=stable).indices
    return order, (torch.gather(masked, -1, order) if ranked else None)


class Layout(NamedTuple):
    """Position-only masks of a block grid (see :func:`layout`)."""

    visible: torch.Tensor  # [NQ, NKV] bool
    forced: torch.Tensor  # [NQ, NKV] bool
    n_visible: torch.Tensor  # [NQ] int64
    n_forced: torch.Tensor  # [NQ] int64
    all_visible: bool
    any_forced: bool


@functools.lru_cache(maxsize=64)
def _layout(q_len, kv_len, block_q, block_kv, causal, diagonal, sink, device) -> Layout:
    visible = block_visibility(q_len, kv_len, block_q, block_kv, causal, device)
    forced = forced_blocks(q_len, kv_len, block_q, block_kv, causal, diagonal, sink, device)
    n_visible, n_forced = row_counts(visible, forced)
    return Layout(visible, forced, n_visible, n_forced, bool(visible.all()), bool(forced.any()))


def layout(q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool, diagonal: bool, sink: bool, device=None) -> Layout:
    """Visibility, forced blocks and their row counts, cached per layout and device.

    They depend on positions only, so repeated plans of one shape (every
    denoising step, every benchmark repeat) build them once; the host flags
    are read once then too. Treat the tensors as read-only.
    """
    return _layout(q_len, kv_len, block_q, block_kv, bool(causal), bool(diagonal), bool(sink), str(torch.device(device or "cpu")))


@functools.lru_cache(maxsize=64)
def _budget_keep(budget, q_len, kv_len, block_q, block_kv, causal, diagonal, sink, device) -> torch.Tensor:
    lay = _layout(q_len, kv_len, block_q, block_kv, causal, diagonal, sink, device)
    counts = budget_counts(budget, q_len, kv_len, block_q, block_kv, causal, lay.forced)
    return keep_by_count(counts, lay.visible.shape[-1]).to(torch.int8)


def budget_keep(budget: float, q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool, diagonal: bool, sink: bool, device=None) -> torch.Tensor:
    """Rank-order keep mask (int8 ``[NQ, NKV]``) of :func:`budget_counts` on :func:`layout`'s forced blocks, cached."""
    return _budget_keep(float(budget), q_len, kv_len, block_q, block_kv, bool(causal), bool(diagonal), bool(sink), str(torch.device(device or "cpu")))


def rank_positions(nkv: int, device=None) -> torch.Tensor:
    """``[NKV]`` rank indices 0..NKV-1 (to compare against per-row counts)."""
    return torch.arange(nkv, device=device)


def exclusive_share(ranked: torch.Tensor) -> torch.Tensor:
    """Share of the row's mass held by the blocks ranked strictly before each block."""
    total = ranked.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    return (ranked.cumsum(-1) - ranked) / total


def keep_by_mass(ranked: torch.Tensor, tau: float, n_forced: torch.Tensor, n_visible: torch.Tensor) -> torch.Tensor:
    """Smallest rank prefix whose mass reaches ``tau`` (the block crossing tau is kept).

    Forced blocks are always kept and count toward the mass; invisible ones
    never are. ``n_forced`` / ``n_visible`` are per-row counts ``[NQ]``.
    Returns a bool mask in rank order.
    """
    rank = rank_positions(ranked.shape[-1], ranked.device)
    keep = (exclusive_share(ranked) < tau) | (rank < n_forced[:, None])
    return keep & (rank < n_visible[:, None])


def keep_by_count(counts: torch.Tensor, nkv: int) -> torch.Tensor:
    """Rank-order mask keeping the first ``counts[i]`` blocks of row i (``[NQ]`` -> ``[NQ, NKV]``)."""
    return rank_positions(nkv, counts.device) < counts[:, None]


def diffuse_round(target: torch.Tensor) -> torch.Tensor:
    """Round a per-row float target to integers whose running total tracks the target's.

    Plain rounding of identical rows (e.g. 1.6 blocks each) biases the whole
    map by the same fraction of a block; rounding the cumulative sum instead
    (error diffusion) alternates 1, 2, 2, 1, 2, ... so the total matches.
    """
    cum = torch.round(torch.cumsum(target.double(), 0))
    return torch.diff(cum, prepend=torch.zeros(1, dtype=cum.dtype, device=cum.device)).long()


def row_counts(visible: torch.Tensor, forced: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n_visible, n_forced)`` per query block, ``[NQ]`` int64."""
    return visible.sum(-1), forced.sum(-1)


def area_units(q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool, forced: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block: visible area in full-block units, and the forced blocks' rounding deficit.

    ``units[i]`` = visible area of row i / (rows of query block i x block_kv);
    ``deficit[i]`` = number of forced blocks - their area in those units
    (forced diagonal blocks are partly visible in causal mode). A rank
    prefix of ``t * units + deficit`` blocks, forced first then full blocks,
    covers a share ``t`` of the row's area (exactly when the non-forced
    blocks are full, i.e. except a ragged last KV block). float64 ``[NQ]``.
    """
    areas = block_areas(q_len, kv_len, block_q, block_kv, causal, forced.device)
    q0 = torch.arange(areas.shape[0], device=areas.device, dtype=torch.float64) * block_q
    full = (torch.clamp(q0 + block_q, max=q_len) - q0) * min(block_kv, kv_len)
    units = areas.sum(-1) / full
    deficit = forced.sum(-1) - (areas * forced).sum(-1) / full
    return units, deficit


def budget_counts(budget: float, q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool, forced: torch.Tensor) -> torch.Tensor:
    """Blocks to keep per query block (``[NQ]``) so the kept area is ``budget`` of the visible area.

    Forced blocks are kept first with their true (possibly partial) area; the
    rest is filled with blocks counted at full area (query rows x block_kv),
    which the remaining blocks are except a ragged last KV block:
    ``budget * units + deficit`` (:func:`area_units`). Counts are
    error-diffused across query blocks (:func:`diffuse_round`) and clamped to
    [max(n_forced, 1), n_visible]. ``budget >= 1`` keeps every visible block.
    """
    visible = block_areas(q_len, kv_len, block_q, block_kv, causal, forced.device) > 0
    n_visible, n_forced = visible.sum(-1), forced.sum(-1)
    if budget >= 1.0:
        return n_visible
    units, deficit = area_units(q_len, kv_len, block_q, block_kv, causal, forced)
    counts = torch.maximum(diffuse_round(budget * units + deficit), n_forced.clamp(min=1))
    return torch.minimum(counts, n_visible)


def unsort(ranked_values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Put per-rank values back in block order (inverse of :func:`rank_blocks`'s order).

    ``ranked_values`` may be broadcastable to ``order`` (e.g. ``[NQ, NKV]``
    rank-order levels shared by every head).
    """
    src = ranked_values.expand(order.shape).contiguous()
    return torch.empty_like(src).scatter_(-1, order, src)


# Level bookkeeping shared by multi-level planners (psa).
LEVEL_COST = (1.0, 0.5, 0.25, 0.125)  # FLOP share of a block at level 1, 2, 4, 8


def profile_at_budget(fractions: tuple[float, float, float, float], budget: float) -> tuple[float, float, float, float]:
    """Scale a per-level block-fraction profile so its FLOP share equals ``budget``.

    ``fractions`` = (f1, f2, f4, f8): the share of a row's blocks at each
    level in rank order (rest skipped). With cumulative fractions c_p scaled
    by x and capped at 1, the row's FLOP share is
    ``sum_p d_p * min(x * c_p, 1)`` with d = (1/2, 1/4, 1/8, 1/8) (the cost of
    a level minus the next one's), continuous and increasing in x from 0 to 1;
    x is found by bisection (host floats, no device work). Returns the
    scaled cumulative fractions (c1, c2, c4, c8); at budget 1 all are 1
    (every block at level 1, i.e. dense).
    """
    cum = []
    total = 0.0
    for f in fractions:
        total += f
        cum.append(total)
    steps = (0.5, 0.25, 0.125, 0.125)

    def share(x: float) -> float:
        return sum(d * min(x * c, 1.0) for d, c in zip(steps, cum))

    if cum[0] <= 0:
        raise ValueError("the level-1 fraction must be positive to reach every budget")
    if budget >= 1.0:
        return (1.0, 1.0, 1.0, 1.0)
    lo, hi = 0.0, 1.0 / cum[0]  # at hi every cumulative fraction is >= 1: share 1
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if share(mid) < budget:
            lo = mid
        else:
            hi = mid
    return tuple(min(hi * c, 1.0) for c in cum)  # type: ignore[return-value]


def level_from_rank(rank_index: torch.Tensor, bounds: list[torch.Tensor]) -> torch.Tensor:
    """Level (1, 2, 4, 8, or 0 = skip) of each rank given cumulative per-row bounds n1 <= n2 <= n4 <= n8.

    ``rank_index`` ``[NKV]``, ``bounds`` four ``[NQ]`` tensors; returns int8 ``[NQ, NKV]``.
    """
    bucket = sum((rank_index[None, :] >= b[:, None]).to(torch.int8) for b in bounds)
    return level_of_bucket(bucket)


def level_of_bucket(bucket: torch.Tensor) -> torch.Tensor:
    """Bucket 0, 1, 2, 3, 4 -> level 1, 2, 4, 8, 0 (skip), int8.

    Arithmetic rather than a lookup table: building a table tensor on the
    GPU is a host-to-device copy, which synchronises the stream.
    """
    bucket = bucket.to(torch.int8)
    return torch.bitwise_left_shift(torch.ones_like(bucket), bucket).masked_fill(bucket >= 4, 0)


def device_constants(values, device, dtype=torch.float32) -> torch.Tensor:
    """A small 1-D tensor of host constants built by fill kernels (no host-to-device copy, no sync)."""
    return torch.cat([torch.full((1,), float(v), dtype=dtype, device=device) for v in values])
