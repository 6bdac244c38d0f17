"""Shared attention kernels (Triton) and their plain-PyTorch references."""

from __future__ import annotations

import torch

from spbench.kernels.executor import execute
from spbench.kernels.pool import Pyramid, build_pyramid
from spbench.kernels.tuning import chosen_config, pin_config
from spbench.kernels.reference import exact_attention, pyramid_attention_reference
from spbench.plan import Plan


def pyramid_attention(q, k, v, levels: torch.Tensor, block_q: int = 128, block_kv: int = 64, causal: bool = False, scale: float | None = None, backend: str = "auto", return_lse: bool = False, pyramid: Pyramid | None = None):
    """Multi-level block-sparse attention over a level map.

    ``levels``: integer tensor ``[B, Hq, ceil(Lq/block_q), ceil(Lk/block_kv)]``
    with values in {0, 1, 2, 4, 8}. See DESIGN.md for the semantics.
    ``pyramid``: pooled K/V (:func:`build_pyramid`) to reuse across calls.
    The lower-level entry is :func:`execute` with a :class:`Plan`.
    """
    plan = Plan.from_levels(levels, q.shape[2], k.shape[2], block_q, block_kv, causal)
    return execute(q, k, v, plan, scale=scale, backend=backend, return_lse=return_lse, pyramid=pyramid)


__all__ = ["Plan", "Pyramid", "build_pyramid", "chosen_config", "pin_config", "exact_attention", "execute", "pyramid_attention", "pyramid_attention_reference"]
