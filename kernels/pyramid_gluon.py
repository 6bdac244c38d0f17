"""EXPERIMENTAL: a warp-specialized Gluon (Hopper, sm_90) fast path for level-1 plans.

Same semantics as :func:`spbench.kernels.pyramid_triton.run_plan` for the
subset it supports (see :func:`unsupported`): non-causal plans whose active
entries are all level 1, fp16/bf16, head dim 64 or 128, block_q 128 or 256,
block_kv 64 or 128, contiguous K/V.

Why a second kernel: the Triton kernel's inner loop tops out near 495
TFLOP/s on H200 (cuDNN reaches ~676) because Triton's pipeliner keeps the
softmax of a tile serialized with its matmuls. This kernel is written in
Gluon (Triton's explicit-layout dialect) in the FA3 style:

* one program per 128 query rows of one (batch, head); three partitions:
  a 1-warp **loader** that walks the plan's level-1 entries
  (:mod:`spbench.kernels.schedule`) and TMA-loads K and V tiles of
  ``BLOCK_N`` rows into ``STAGES``-deep shared-memory rings (a 128-row tile
  of 64-row blocks is two 64-row TMA loads of two blocks; a 64-row tile of
  a 128-row block is half a block), and two 4-warp **consumer**
  warpgroups, each owning 64 query rows;
* separate ready/empty mbarriers for K and V, so ``QK^T`` of tile t can
  start before V of tile t has landed; an empty barrier completes when both
  consumers released the slot (count 2);
* inside a consumer the matmuls are async wgmma and software-pipelined:
  ``S_t = Q K_t^T`` and ``O += P_{t-1} V_{t-1}`` are issued back to back, the
  softmax of S_t runs while the PV wgmma is still on the tensor cores, and
  O is rescaled once that finishes. The two consumer warpgroups are
  independent partitions, so the warp schedulers interleave one's softmax
  with the other's matmuls (no explicit ping-pong barrier);
* exp2 softmax with the log2(e) scale folded in, fp32 accumulators; only
  the tiles past the plan's *clean* entries (the ragged last KV block, the
  odd tail of a pair of 64-row blocks) pay for masking. The odd tail loads
  the last block twice and masks the copy, so no stale shared memory is
  ever multiplied (0 * NaN would poison the row);
* empty rows return zeros (lse -inf); epilogue ``row_scale * O +
  compensation`` and the natural-log LSE as in the Triton kernel.

Not wired into ``run_plan`` unless it measures faster; see
:func:`run_plan_gluon` and ``benchmarks/bench_gluon.py``.
"""

from __future__ import annotations

import torch

from spbench.errors import SpbenchError
from spbench.kernels.schedule import schedule_for
from spbench.method import check_out
from spbench.kernels.gluon_attn import BLOCK_M, CONSUMER_REGS, HAVE_GLUON, LOADER_REGS, MAXNREG
from spbench.plan import Plan

LOG2E = 1.4426950408889634

if HAVE_GLUON:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from spbench.kernels.gluon_attn import _gluon_fwd


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, block_n: int = 128) -> str | None:
    """Why the Gluon path cannot run this call (None: it can)."""
    if not HAVE_GLUON:
        return "triton lacks the Gluon Hopper API"
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] != 9:
        return "needs a CUDA sm_90 device"
    if plan.is_dense or plan.causal:
        return "needs a non-causal block-sparse plan"
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return "needs fp16/bf16 q, k, v of one dtype"
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[-1] not in (64, 128) or k.shape[-1] != q.shape[-1]:
        return "needs [B, H, L, D] inputs with head dim 64 or 128"
    if plan.block_q not in (128, 256) or plan.block_kv not in (64, 128) or block_n not in (64, 128):
        return "needs block_q in (128, 256), block_kv in (64, 128)"
    if not (k.is_contiguous() and v.is_contiguous()) or k.data_ptr() % 16 or v.data_ptr() % 16:
        return "needs contiguous, 16-byte aligned k and v"
    if k.shape[0] * k.shape[1] * k.shape[2] >= 2**31 or q.shape[2] * q.stride(2) >= 2**31:
        return "row offsets beyond int32"
    if schedule_for(plan).level_mask & ~1:
        return "pooled levels (2/4/8) are not implemented in the Gluon path"
    return None


def _gl_dtype(dtype: torch.dtype):
    return gl.bfloat16 if dtype == torch.bfloat16 else gl.float16


def descriptors(k: torch.Tensor, v: torch.Tensor, load_rows: int):
    """TMA descriptors over the [B*Hkv*Lk, D] views of k and v, one load = ``load_rows`` rows."""
    d = k.shape[-1]
    layout = gl.NVMMASharedLayout.get_default_for([load_rows, d], _gl_dtype(k.dtype))
    return tuple(TensorDescriptor.from_tensor(t.reshape(-1, d), [load_rows, d], layout) for t in (k, v))


def run_plan_gluon(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: Plan,
    scale: float | None = None,
    return_lse: bool = False,
    out: torch.Tensor | None = None,
    block_n: int = 128,
    stages: int = 2,
):
    """Run a level-1 plan with the Gluon kernel (see :func:`unsupported` for the supported set)."""
    from spbench.kernels.pyramid_triton import _check, _extra, _store_ok  # noqa: PLC0415

    _check(q, k, v, plan)
    check_out(q, out)
    reason = unsupported(q, k, v, plan, block_n)
    if reason:
        raise SpbenchError(f"the Gluon path {reason}")
    if out is not None and not _store_ok(out):
        raise SpbenchError("the Gluon path needs an out tensor with a contiguous last dim")
    bsz, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else float(scale)
    sched = schedule_for(plan)
    nqb = plan.num_q_blocks
    if q.stride(-1) != 1:
        q = q.contiguous()
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(bsz, hq, lq, device=q.device, dtype=torch.float32) if return_lse else out
    row_scale = _extra(plan, "row_scale", (bsz, hq, nqb), q.device)
    comp = _extra(plan, "compensation", (bsz, hq, nqb, d), q.device)
    if lq == 0:
        return (out, lse) if return_lse else out
    load_rows = min(block_n, plan.block_kv)
    k_desc, v_desc = descriptors(k, v, load_rows)
    grid = ((lq + BLOCK_M - 1) // BLOCK_M, bsz * hq)
    _gluon_fwd[grid](
        q, k_desc, v_desc, out, lse, row_scale if row_scale is not None else out, comp if comp is not None else out,
        sched.idx, sched.count,
        scale * LOG2E, lq, lk, hq, hq // hkv, nqb, sched.width,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        BLOCK_Q=plan.block_q, BLOCK_KV=plan.block_kv, BLOCK_N=block_n, LOAD_ROWS=load_rows, D=d, STAGES=stages,
        HAS_SCALE=row_scale is not None, HAS_COMP=comp is not None, RETURN_LSE=return_lse,
        CONSUMER_REGS=CONSUMER_REGS, LOADER_REGS=LOADER_REGS,
        num_warps=4, maxnreg=MAXNREG,
    )
    return (out, lse) if return_lse else out


__all__ = ["HAVE_GLUON", "run_plan_gluon", "unsupported", "descriptors"]
