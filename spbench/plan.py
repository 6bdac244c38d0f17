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


def levels_to_csr(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense level map ``[B, H, NQ, NKV]`` to (kv_num_blocks, kv_indices, kv_levels)."""
    active = levels > 0
    counts = active.sum(-1, dtype=torch.int32)
    width = max(int(counts.max().item()) if counts.numel() else 0, 1)
    # Stable sort puts active blocks first, in ascending KV order.
    order = torch.sort((~active).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    picked = torch.gather(levels, -1, order).to(torch.int8)
    valid = torch.arange(width, device=levels.device) < counts[..., None]
    indices = torch.where(valid, order, torch.zeros_like(order)).to(torch.int32)
    picked = torch.where(valid, picked, torch.zeros_like(picked))
    return counts, indices.contiguous(), picked.contiguous()


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
    ) -> "Plan":
        """Build a plan from a level map ``[B, H, ceil(Lq/block_q), ceil(Lk/block_kv)]``."""
        expect = (num_blocks(q_len, block_q), num_blocks(kv_len, block_kv))
        if levels.dim() != 4 or tuple(levels.shape[-2:]) != expect:
            raise ValueError(f"levels must have shape [B, H, {expect[0]}, {expect[1]}], got {tuple(levels.shape)}")
        check_levels(levels)
        counts, indices, lv = levels_to_csr(levels)
        plan = cls(q_len, kv_len, block_q, block_kv, causal, counts, indices, lv, dict(extras or {}), 1.0, dict(stats or {}))
        plan.density = plan.compute_density()
        return plan

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
