"""The Plan: what a sparse method decided to compute, in the executor's terms.

A plan lists, per (batch, query head, query block), the active KV blocks and
the pooling level of each, in CSR-like form (the same idea as FlexAttention's
BlockMask ``kv_num_blocks`` / ``kv_indices``):

* ``kv_num_blocks`` int32 ``[B, Hq, NQ]``: how many KV blocks are active;
* ``kv_indices``    int32 ``[B, Hq, NQ, W]``: their indices, ascending, the
  first ``kv_num_blocks`` entries valid, the rest padding;
* ``kv_levels``     int8  ``[B, Hq, NQ, W]``: the level of each (1, 2, 4, 8).

A level-p block attends to its keys/values mean-pooled in groups of p with
+ln(p) on each pooled logit (see DESIGN.md). ``extras`` carries what goes
beyond a level map (rectification terms, token indices, an inner plan).

``density`` is the FLOPs of the planned work over dense FLOPs: each active
block contributes its visible (query, key) pairs divided by its level, over
all visible pairs of dense attention (the causal triangle when causal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import functools
import math

import torch

LEVELS = (1, 2, 4, 8)


def num_blocks(length: int, block: int) -> int:
    return (length + block - 1) // block


def block_areas(q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool, device=None) -> torch.Tensor:
    """Visible (query, key) pairs in each (query block, KV block), float64 ``[NQ, NKV]``.

    Causal masking is top-left aligned, as in SDPA's ``is_causal``: query t
    sees keys 0..t.
    """
    nq, nk = num_blocks(q_len, block_q), num_blocks(kv_len, block_kv)
    q0 = torch.arange(nq, device=device, dtype=torch.float64) * block_q
    q1 = torch.clamp(q0 + block_q, max=q_len)
    k0 = torch.arange(nk, device=device, dtype=torch.float64) * block_kv
    k1 = torch.clamp(k0 + block_kv, max=kv_len)
    width = (k1 - k0)[None, :]
    if not causal:
        return (q1 - q0)[:, None] * width

    # Sum over query rows t in [q0, q1) of clamp(t + 1 - k0, 0, width),
    # via S(n) = sum_{x=1..n} clamp(x, 0, w) in closed form.
    def prefix(n: torch.Tensor) -> torch.Tensor:
        n = torch.clamp(n, min=0)
        under = n * (n + 1) / 2
        over = width * (width + 1) / 2 + (n - width) * width
        return torch.where(n <= width, under, over)

    hi = q1[:, None] - k0[None, :]
    lo = q0[:, None] - k0[None, :]
    return prefix(hi) - prefix(lo)


def levels_to_csr(levels: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense level map ``[B, H, NQ, NKV]`` to (kv_num_blocks, kv_indices, kv_levels).

    The active blocks of a row go to slots 0, 1, ... in ascending KV order:
    the slot of block j is (active blocks before j), an inclusive cumsum of
    the active mask minus one, and one scatter writes index and level there
    (inactive blocks scatter into a spare slot that is cut off). That is
    one cumsum instead of a stable sort over [B, H, NQ, NKV].
    ``width`` (the largest row count, at least 1) is read from the device
    when not given: the one host sync of this function.
    """
    active = levels > 0
    counts = active.sum(-1, dtype=torch.int32)
    if width is None:
        width = max(int(counts.max().item()) if counts.numel() else 0, 1)
    return counts, *_compact_active(levels, active, width)


def _compact_active(levels: torch.Tensor, active: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    nkv = levels.shape[-1]
    slot = torch.cumsum(active, -1, dtype=torch.int64).sub_(1).masked_fill_(~active, width)
    shape = (*levels.shape[:-1], width + 1)
    index = torch.arange(nkv, device=levels.device, dtype=torch.int32).expand(levels.shape)
    indices = torch.zeros(shape, dtype=torch.int32, device=levels.device).scatter_(-1, slot, index)
    picked = torch.zeros(shape, dtype=torch.int8, device=levels.device).scatter_(-1, slot, levels.to(torch.int8))
    return indices[..., :width].contiguous(), picked[..., :width].contiguous()


def density_from_area8(area8: int, total: int, heads: int) -> float:
    """Density from the exact planned area x 8 (sum of area * 8 / level) over ``heads`` (batch x heads) maps of ``total`` visible pairs.

    Same value as :meth:`Plan.compute_density`: an exact rational, correctly rounded.
    """
    pairs = total * heads
    return area8 / (8 * pairs) if pairs > 0 else 0.0


def _row_kernels(levels: torch.Tensor) -> bool:
    """Use the Triton row kernels of ``Plan.from_levels`` (CUDA int8 maps; tests switch it on in the interpreter)."""
    return levels.is_cuda and levels.dtype == torch.int8 and levels.is_contiguous()


def _bad_levels(levels: torch.Tensor) -> torch.Tensor:
    """Device bool: some entry is not in {0, 1, 2, 4, 8} (x & (x - 1) == 0 holds for 0 and powers of two)."""
    lv = levels.to(torch.int16)
    return ((lv < 0) | (lv > 8) | ((lv & (lv - 1)) != 0)).any()


@functools.lru_cache(maxsize=32)
def area_table(q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool, device: str) -> tuple[torch.Tensor, int]:
    """(:func:`block_areas` as int64 ``[NQ, NKV]`` on ``device``, their sum); cached per layout.

    Areas are whole numbers of (query, key) pairs, so int64 sums of
    area x (8 / level) are exact, whatever the summation order.
    """
    areas = block_areas(q_len, kv_len, block_q, block_kv, causal, device).round().long()
    return areas, int(areas.sum())


def planned_area8(levels: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """Device int64: sum over the map of area x 8 / level (level 0 adds nothing)."""
    w8 = torch.where(levels > 0, 8 // levels.to(torch.int16).clamp(min=1), 0)  # 8, 4, 2, 1 for levels 1, 2, 4, 8
    per_block = w8.sum(dim=tuple(range(levels.dim() - 2)), dtype=torch.int64)  # over batch and heads
    return (per_block * areas).sum()


def csr_to_levels(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, kv_levels: torch.Tensor, nkv: int) -> torch.Tensor:
    width = kv_indices.shape[-1]
    valid = torch.arange(width, device=kv_indices.device) < kv_num_blocks[..., None].long()
    out = torch.zeros(*kv_indices.shape[:-1], nkv + 1, dtype=torch.int8, device=kv_indices.device)
    # Padding writes to a spare column nkv that is dropped afterwards.
    idx = torch.where(valid, kv_indices.long(), torch.full_like(kv_indices, nkv, dtype=torch.long))
    out.scatter_(-1, idx, torch.where(valid, kv_levels, torch.zeros_like(kv_levels)).to(torch.int8))
    return out[..., :nkv]


def check_levels(levels: torch.Tensor) -> None:
    bad = ~((levels == 0) | (levels == 1) | (levels == 2) | (levels == 4) | (levels == 8))
    if bool(bad.any()):
        raise ValueError("levels must be in {0, 1, 2, 4, 8}")


@dataclass
class Plan:
    """A sparse attention plan; see the module docstring."""

    q_len: int
    kv_len: int
    block_q: int = 128
    block_kv: int = 64
    causal: bool = False
    kv_num_blocks: torch.Tensor | None = None
    kv_indices: torch.Tensor | None = None
    kv_levels: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    density: float = 1.0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dense(self) -> bool:
        """True for a plan that says "run dense attention" (no block map)."""
        return self.kv_num_blocks is None

    @property
    def num_q_blocks(self) -> int:
        return num_blocks(self.q_len, self.block_q)

    @property
    def num_kv_blocks(self) -> int:
        return num_blocks(self.kv_len, self.block_kv)

    @classmethod
    def dense(cls, q_len: int, kv_len: int, causal: bool = False, **kw: Any) -> "Plan":
        return cls(q_len=q_len, kv_len=kv_len, causal=causal, density=1.0, **kw)

    @classmethod
    def from_levels(
        cls,
        levels: torch.Tensor,
        q_len: int,
        kv_len: int,
        block_q: int = 128,
        block_kv: int = 64,
        causal: bool = False,
        extras: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        deferred: dict[str, torch.Tensor] | None = None,
    ) -> "Plan":
        """Build a plan from a level map ``[B, H, ceil(Lq/block_q), ceil(Lk/block_kv)]``.

        One host sync in all (see :func:`levels_to_csr`). ``deferred``:
        0-dim device tensors read in that same sync and stored as floats in
        ``stats`` under their names (so planners need no sync of their own).
        """
        expect = (num_blocks(q_len, block_q), num_blocks(kv_len, block_kv))
        if levels.dim() != 4 or tuple(levels.shape[-2:]) != expect:
            raise ValueError(f"levels must have shape [B, H, {expect[0]}, {expect[1]}], got {tuple(levels.shape)}")
        areas, total = area_table(q_len, kv_len, block_q, block_kv, causal, str(levels.device))
        fast = _row_kernels(levels)
        if fast:  # two row-wise Triton passes instead of ~20 full-map torch ops (kernels/plan_csr.py)
            from spbench.kernels import plan_csr  # noqa: PLC0415 - imports triton

            counts, area8_rows, bad_rows = plan_csr.row_stats(levels, areas)
            bad, area8 = bad_rows.sum(), area8_rows.sum()
        else:
            active = levels > 0
            counts = active.sum(-1, dtype=torch.int32)
            bad, area8 = _bad_levels(levels), planned_area8(levels, areas)
        # Everything the host needs, read in one sync: the widest row, the
        # validity check, the planned area (exact int64) and any deferred stats.
        widest = counts.max() if counts.numel() else torch.zeros((), device=levels.device)
        names = list(deferred or {})
        wanted = [widest, bad, area8] + [deferred[n] for n in names]
        values = torch.stack([t.reshape(()).to(torch.float64) for t in wanted]).tolist()
        if values[1]:
            raise ValueError("levels must be in {0, 1, 2, 4, 8}")
        width = max(int(values[0]), 1)
        indices, lv = plan_csr.compact_rows(levels, width) if fast else _compact_active(levels, active, width)
        stats = dict(stats or {})
        stats.update(zip(names, values[3:]))
        density = density_from_area8(int(values[2]), total, math.prod(levels.shape[:-2]))
        return cls(q_len, kv_len, block_q, block_kv, causal, counts, indices, lv, dict(extras or {}), density, stats)

    def to_levels(self) -> torch.Tensor:
        """The dense level map ``[B, H, NQ, NKV]`` (int8)."""
        if self.is_dense:
            raise ValueError("a dense plan has no level map")
        return csr_to_levels(self.kv_num_blocks, self.kv_indices, self.kv_levels, self.num_kv_blocks)

    def compute_density(self) -> float:
        """Planned FLOPs over dense FLOPs, from the block map."""
        if self.is_dense:
            return 1.0
        areas = block_areas(self.q_len, self.kv_len, self.block_q, self.block_kv, self.causal, self.kv_indices.device)
        width = self.kv_indices.shape[-1]
        valid = torch.arange(width, device=self.kv_indices.device) < self.kv_num_blocks[..., None].long()
        qb = torch.arange(self.num_q_blocks, device=self.kv_indices.device)[:, None]
        area = areas[qb, self.kv_indices.long()]  # broadcasts over [B, H]
        weight = torch.where(valid, 1.0 / self.kv_levels.clamp(min=1).double(), torch.zeros((), dtype=torch.float64, device=area.device))
        planned = (area * weight).sum()
        total = areas.sum() * self.kv_num_blocks.shape[0] * self.kv_num_blocks.shape[1]
        return float(planned / total) if float(total) > 0 else 0.0

    def level_fractions(self) -> dict[str, float]:
        """Share of all (query block, KV block) pairs at each level, skipped included."""
        if self.is_dense:
            return {"1": 1.0}
        total = self.kv_num_blocks.numel() * self.num_kv_blocks
        width = self.kv_indices.shape[-1]
        valid = torch.arange(width, device=self.kv_indices.device) < self.kv_num_blocks[..., None].long()
        out = {str(p): float(((self.kv_levels == p) & valid).sum()) / total for p in LEVELS}
        out["0"] = 1.0 - sum(out.values())
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description for result records."""
        info: dict[str, Any] = {"density": self.density, "block_q": self.block_q, "block_kv": self.block_kv}
        if not self.is_dense:
            info["level_fractions"] = self.level_fractions()
        info.update({k: v for k, v in self.stats.items() if isinstance(v, (int, float, str, bool))})
        return info


def density_of_levels(levels: torch.Tensor, q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool) -> float:
    """Density of a dense level map (same definition as :meth:`Plan.compute_density`)."""
    areas = block_areas(q_len, kv_len, block_q, block_kv, causal, levels.device)
    weight = torch.where(levels > 0, 1.0 / levels.clamp(min=1).double(), torch.zeros((), dtype=torch.float64, device=levels.device))
    total = areas.sum() * levels.shape[0] * levels.shape[1]
    return float((weight * areas).sum() / total) if float(total) > 0 else 0.0
