"""The shared executor: runs any Plan.

Backends:
* ``triton``: the Triton pyramid kernel (GPU, or CPU under TRITON_INTERPRET=1);
* ``torch``: the plain-PyTorch reference (any device, small shapes);
* ``auto``: triton on CUDA tensors or under the interpreter, torch otherwise.
"""

from __future__ import annotations

import os

import torch

from spbench.kernels.reference import pyramid_attention_reference
from spbench.plan import Plan


def triton_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def execute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, scale: float | None = None, backend: str = "auto", return_lse: bool = False, pyramid=None):
    """Run attention over ``plan``; output has q's dtype.

    ``pyramid``: pooled K/V from :func:`spbench.kernels.pool.build_pyramid`
    to reuse (the Triton path; else ``plan.extras['pyramid']`` or a fresh one).
    """
    if plan.is_dense:
        raise ValueError("a dense plan has no block map; run dense attention instead")
    use_triton = backend == "triton" or (backend == "auto" and triton_available(q.device))
    if use_triton:
        from spbench.kernels import pyramid_triton  # noqa: PLC0415 - imports triton

        return pyramid_triton.run_plan(q, k, v, plan, scale=scale, return_lse=return_lse, pyramid=pyramid)
    result = pyramid_attention_reference(
        q,
        k,
        v,
        plan.to_levels(),
        plan.block_q,
        plan.block_kv,
        plan.causal,
        scale,
        row_scale=plan.extras.get("row_scale"),
        compensation=plan.extras.get("compensation"),
        return_lse=return_lse,
    )
    if return_lse:
        return result[0].to(q.dtype), result[1]
    return result.to(q.dtype)
