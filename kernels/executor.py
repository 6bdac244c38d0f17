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
from spbench.method import check_out
from spbench.plan import Plan


def triton_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def execute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, scale: float | None = None, backend: str = "auto", return_lse: bool = False, pyramid=None, out: torch.Tensor | None = None):
    """Run attention over ``plan``; output has q's dtype.

    ``pyramid``: pooled K/V from :func:`spbench.kernels.pool.build_pyramid`
    to reuse (the Triton path; else ``plan.extras['pyramid']`` or a fresh one).
    ``out``: ``[B, Hq, Lq, D]`` of q's dtype, any strides; the output is
    written there (by the Triton kernel directly) and ``out`` is returned.
    """
    if plan.is_dense:
        raise ValueError("a dense plan has no block map; run dense attention instead")
    check_out(q, out)
    use_triton = backend == "triton" or (backend == "auto" and triton_available(q.device))
    if use_triton:
        from spbench.kernels import pyramid_triton  # noqa: PLC0415 - imports triton

        return pyramid_triton.run_plan(q, k, v, plan, scale=scale, return_lse=return_lse, pyramid=pyramid, out=out)
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
        result, lse = result
    result = result.to(q.dtype) if out is None else out.copy_(result)
    return (result, lse) if return_lse else result
