"""The pooled K/V pyramid: keys and values mean-pooled in groups of 2, 4 and 8.

One Triton launch reads each K and V row once and writes the levels asked
for, all three by default (level 4 is built from the level-2 sums, level 8
from the level-4 sums, so "pooling repeated pairwise" and "mean of the
group" agree exactly in fp32). The executor asks only for its plan's levels:
the pyramid mix 1:0.10,2:0.05,8:0.20 skips level 4, 13% of the pass's bytes
(at 32000 x 12 heads: 197 MB read, 172 MB written with every level).
Groups are global: pooled row j of level p stands for key positions
j*p .. j*p+p-1. A group cut short by the end of the sequence averages the
m < p keys it has (see :func:`spbench.kernels.reference.pool_kv`).

A :class:`Pyramid` can be built once and reused by every call that shares
K/V (the executor, and planners that score with pooled keys). The pooled
tensors have K's dtype; the sums are taken in fp32 and rounded once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from spbench.errors import SpbenchError

try:  # triton is optional on machines that only run the PyTorch references
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None

POOL_LEVELS = (2, 4, 8)


def pooled_length(length: int, p: int) -> int:
    return (length + p - 1) // p


@dataclass
class Pyramid:
    """Pooled keys/values of one (K, V) pair: ``k[p]``, ``v[p]`` are ``[B, Hkv, ceil(Lk/p), D]``.

    ``k[1]``/``v[1]`` are the originals. ``matches(k, v)`` says whether the
    pyramid was built from exactly these tensors (same storage, shape and
    in-place version), so a stale pyramid is never used silently.
    """

    k: dict[int, torch.Tensor]
    v: dict[int, torch.Tensor]
    source: tuple = field(default=(), repr=False)

    @property
    def kv_len(self) -> int:
        return self.k[1].shape[2]

    @property
    def levels(self) -> tuple[int, ...]:
        """The pooled levels it holds (all of 2, 4, 8 unless built for fewer)."""
        return tuple(p for p in POOL_LEVELS if p in self.k)

    def matches(self, k: torch.Tensor, v: torch.Tensor) -> bool:
        return self.source == _fingerprint(k, v)


def _fingerprint(k: torch.Tensor, v: torch.Tensor) -> tuple:
    return tuple((t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t._version) for t in (k, v))


#: level-8 groups per program at head dim 128 (G * 8 rows of K or V; scaled to keep G * D fixed) and warps per
#: program; benchmarks/bench_pool.py times other values
POOL_GROUPS = 16
POOL_WARPS = 4

if triton is not None:

    @triton.jit
    def _pool_kernel(
        k_ptr, v_ptr, out2_ptr, out4_ptr, out8_ptr,
        H, L, L2, L4, L8,
        sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
        o2_kv, o4_kv, o8_kv, o2_bh, o4_bh, o8_bh,
        D: tl.constexpr, G: tl.constexpr, W2: tl.constexpr, W4: tl.constexpr, W8: tl.constexpr,
    ):
        """One program: G level-8 groups (8*G rows) of one (batch, head) of K (axis 2 = 0) or V (= 1).

        K and V share one launch; their pooled rows go to the two halves of one
        buffer per level (``o*_kv`` apart). Levels whose W flag is off are not
        stored (their sums are still the step to the next level).
        """
        pid_g = tl.program_id(0)
        bh = tl.program_id(1)
        which = tl.program_id(2)
        b = bh // H
        h = bh % H
        if which == 0:
            src = k_ptr + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
            s_l = sk_l
        else:
            src = v_ptr + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
            s_l = sv_l
        j = pid_g * G + tl.arange(0, G)  # level-8 group index
        d = tl.arange(0, D)
        # x_i = row 8j+i; rows past the end read as 0. Sums of each level are
        # then divided by the true group size m = min(p, L - start).
        x0 = _load_rows(src, j * 8 + 0, d, L, s_l)
        x1 = _load_rows(src, j * 8 + 1, d, L, s_l)
        x2 = _load_rows(src, j * 8 + 2, d, L, s_l)
        x3 = _load_rows(src, j * 8 + 3, d, L, s_l)
        x4 = _load_rows(src, j * 8 + 4, d, L, s_l)
        x5 = _load_rows(src, j * 8 + 5, d, L, s_l)
        x6 = _load_rows(src, j * 8 + 6, d, L, s_l)
        x7 = _load_rows(src, j * 8 + 7, d, L, s_l)
        a = x0 + x1
        b2 = x2 + x3
        c = x4 + x5
        e = x6 + x7
        if W2:
            out2 = out2_ptr + which.to(tl.int64) * o2_kv
            _store_mean(out2, bh, o2_bh, j * 4 + 0, d, a, 2, L, L2, D)
            _store_mean(out2, bh, o2_bh, j * 4 + 1, d, b2, 2, L, L2, D)
            _store_mean(out2, bh, o2_bh, j * 4 + 2, d, c, 2, L, L2, D)
            _store_mean(out2, bh, o2_bh, j * 4 + 3, d, e, 2, L, L2, D)
        f = a + b2
        g = c + e
        if W4:
            out4 = out4_ptr + which.to(tl.int64) * o4_kv
            _store_mean(out4, bh, o4_bh, j * 2 + 0, d, f, 4, L, L4, D)
            _store_mean(out4, bh, o4_bh, j * 2 + 1, d, g, 4, L, L4, D)
        if W8:
            _store_mean(out8_ptr + which.to(tl.int64) * o8_kv, bh, o8_bh, j, d, f + g, 8, L, L8, D)

    @triton.jit
    def _load_rows(src, r, d, L, s_l):
        return tl.load(src + r.to(tl.int64)[:, None] * s_l + d[None, :], mask=(r < L)[:, None], other=0.0).to(tl.float32)

    @triton.jit
    def _store_mean(out_ptr, bh, o_bh, r, d, total, P: tl.constexpr, L, LP, D: tl.constexpr):
        m = tl.maximum(tl.minimum(L - r * P, P), 1).to(tl.float32)  # rows past the end are masked
        ptr = out_ptr + bh.to(tl.int64) * o_bh + r.to(tl.int64)[:, None] * D + d[None, :]
        tl.store(ptr, (total / m[:, None]).to(out_ptr.dtype.element_ty), mask=(r < LP)[:, None])


def _buffer(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An empty [2, B, H, Lp, D] level buffer. When Lp is not a multiple of 8, zeroed rows follow it up to the
    last head's next 8-row boundary: the Gluon kernel's interleaved tiles load whole 8-row groups, and the last
    head's last group would otherwise end outside the allocation (a row past a head's end is masked, but
    0 x NaN is NaN, so those rows must hold numbers)."""
    n = math.prod(shape)
    room = (-shape[3]) % 8 * shape[4]
    if not room:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    flat = torch.empty(n + room, dtype=like.dtype, device=like.device)
    flat[n:].zero_()
    return flat[:n].view(shape)


def _pool_kv(k: torch.Tensor, v: torch.Tensor, levels: tuple[int, ...]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """K's and V's pooled ``levels`` in one launch: per level one [2, B, H, Lp, D] buffer, K's half and V's."""
    bsz, heads, length, dim = k.shape
    if dim & (dim - 1) or dim < 16:
        raise SpbenchError(f"the pyramid kernel needs a power-of-two head dim >= 16, got {dim}")
    lens = {p: pooled_length(length, p) for p in POOL_LEVELS}
    bufs = {p: _buffer((2, bsz, heads, lens[p], dim), k) for p in levels}
    ptr = {p: bufs.get(p, k) for p in POOL_LEVELS}  # an unstored level's pointer is never written
    per_head = {p: lens[p] * dim for p in POOL_LEVELS}  # elements of one (batch, head) slab
    groups = max(1, POOL_GROUPS * 128 // dim)
    grid = (triton.cdiv(lens[8], groups), bsz * heads, 2)
    _pool_kernel[grid](
        k, v, ptr[2], ptr[4], ptr[8],
        heads, length, lens[2], lens[4], lens[8],
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        bsz * heads * per_head[2], bsz * heads * per_head[4], bsz * heads * per_head[8],  # K's half to V's
        per_head[2], per_head[4], per_head[8],
        D=dim, G=groups, W2=2 in levels, W4=4 in levels, W8=8 in levels, num_warps=POOL_WARPS,
    )
    return {p: bufs[p][0] for p in levels}, {p: bufs[p][1] for p in levels}


def build_pyramid(k: torch.Tensor, v: torch.Tensor, levels=POOL_LEVELS) -> Pyramid:
    """Pool K and V by each of ``levels`` (some of 2, 4, 8) in one pass (Triton; CUDA or TRITON_INTERPRET=1).

    A plan that uses fewer levels needs only those (the executor asks for
    its plan's). Falls back to the PyTorch pooling of
    :mod:`spbench.kernels.reference` when Triton cannot run here (plain CPU),
    with the same rounding to K's dtype.
    """
    if k.shape != v.shape or k.dim() != 4:
        raise SpbenchError(f"k and v must both be [batch, heads, seq, head_dim], got {tuple(k.shape)} and {tuple(v.shape)}")
    levels = tuple(sorted(set(levels)))
    if not set(levels) <= set(POOL_LEVELS):
        raise SpbenchError(f"pooled levels are some of {POOL_LEVELS}, got {levels}")
    source = _fingerprint(k, v)
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    from spbench.kernels.executor import triton_available  # noqa: PLC0415 - avoid an import cycle

    if not levels:
        pk, pv = {}, {}
    elif triton is not None and triton_available(k.device):
        pk, pv = _pool_kv(k, v, levels)
    else:
        from spbench.kernels.reference import pool_kv  # noqa: PLC0415

        acc = torch.float64 if k.dtype == torch.float64 else torch.float32
        pk = {p: pool_kv(k.to(acc), p)[0].to(k.dtype) for p in levels}
        pv = {p: pool_kv(v.to(acc), p)[0].to(v.dtype) for p in levels}
    return Pyramid({1: k, **pk}, {1: v, **pv}, source)
