"""Per-block statistics of a [B, H, L, D] tensor: mean and mean absolute deviation.

Used by planners that pool blocks (Rectified SpaAttn's pooled scores and its
GAPR error bound). For block n of ``block`` rows (the last one ragged, with its
real row count m):

* ``mean[b, h, n]  = sum_rows x / m``
* ``mad[b, h, n]   = sum_rows |x - mean| / m``   (per dimension)

The Triton kernel reads each block once from HBM (a block of up to 128 x 128
elements is held in registers; a larger one is read twice, the second pass
hitting L2), accumulates in fp32, and never materialises ``x - mean``.
:func:`block_stats_reference` is the plain-PyTorch reference.
"""

from __future__ import annotations

import torch

try:  # Triton is optional on machines without it (the torch path still works).
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None


def block_counts(length: int, block: int, n: int, device) -> torch.Tensor:
    """Rows of each block, int64 ``[n]`` (the last one ragged), built on the device.

    (Writing the ragged count into a ``full`` tensor from Python would be a
    host-to-device copy, which synchronises.)
    """
    return torch.clamp(length - torch.arange(n, device=device) * block, max=block)


def block_stats_reference(x: torch.Tensor, block: int, with_mad: bool = True):
    """Plain-PyTorch reference: (mean, mad or None, counts), fp32 ``[B, H, N, D]``."""
    bsz, heads, length, dim = x.shape
    n = (length + block - 1) // block
    pad = n * block - length
    xf = torch.nn.functional.pad(x.float(), (0, 0, 0, pad)).view(bsz, heads, n, block, dim)
    counts = block_counts(length, block, n, x.device)
    valid = (torch.arange(n * block, device=x.device) < length).view(n, block, 1)
    mean = xf.sum(3) / counts.float()[:, None]
    mad = None
    if with_mad:
        dev = torch.where(valid, (xf - mean[:, :, :, None]).abs(), torch.zeros((), device=x.device))
        mad = dev.sum(3) / counts.float()[:, None]
    return mean, mad, counts


def chunk_rows(block: int, block_d: int) -> int:
    """Rows :func:`pool_rows` reads at a time: the whole block when it fits in 128 x 128 registers
    (and is a power of two), else 32-row chunks (two passes, the second hitting L2)."""
    chunk = block if block * block_d <= 128 * 128 and block & (block - 1) == 0 else min(block, 32)
    if block % chunk:
        raise ValueError(f"block ({block}) must be a multiple of {chunk}")
    return chunk


if triton is not None:

    @triton.jit
    def pool_rows(base, stride_l, stride_d, start, L, dims, dmask, BLOCK: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, WITH_MAD: tl.constexpr):
        """(mean, mad) fp32 over rows [start, start + BLOCK) of one [L, D] slice (mad = mean without WITH_MAD)."""
        count = tl.minimum(L - start, BLOCK).to(tl.float32)
        if CHUNK == BLOCK:  # the whole block in registers: one read, both statistics from it
            rows = start + tl.arange(0, CHUNK)
            mask = (rows < L)[:, None] & dmask[None, :]
            x = tl.load(base + rows.to(tl.int64)[:, None] * stride_l + dims[None, :] * stride_d, mask=mask, other=0.0).to(tl.float32)
            mean = tl.sum(x, axis=0) / count
            mad = mean
            if WITH_MAD:
                mad = tl.sum(tl.where(mask, tl.abs(x - mean[None, :]), 0.0), axis=0) / count
        else:  # two passes over chunks (the second one hits L2)
            acc = tl.zeros([BLOCK_D], dtype=tl.float32)
            for r0 in range(0, BLOCK, CHUNK):
                rows = start + r0 + tl.arange(0, CHUNK)
                mask = (rows < L)[:, None] & dmask[None, :]
                acc += tl.sum(tl.load(base + rows.to(tl.int64)[:, None] * stride_l + dims[None, :] * stride_d, mask=mask, other=0.0).to(tl.float32), axis=0)
            mean = acc / count
            mad = mean
            if WITH_MAD:
                dev = tl.zeros([BLOCK_D], dtype=tl.float32)
                for r0 in range(0, BLOCK, CHUNK):
                    rows = start + r0 + tl.arange(0, CHUNK)
                    mask = (rows < L)[:, None] & dmask[None, :]
                    x = tl.load(base + rows.to(tl.int64)[:, None] * stride_l + dims[None, :] * stride_d, mask=mask, other=0.0).to(tl.float32)
                    dev += tl.sum(tl.where(mask, tl.abs(x - mean[None, :]), 0.0), axis=0)
                mad = dev / count
        return mean, mad

    @triton.jit
    def _block_stats_kernel(
        X, MEAN, MAD,
        stride_b, stride_h, stride_l, stride_d,
        H, L, D,
        BLOCK: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, WITH_MAD: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        dims = tl.arange(0, BLOCK_D)
        dmask = dims < D
        mean, mad = pool_rows(X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h, stride_l, stride_d, pid_n * BLOCK, L, dims, dmask, BLOCK, CHUNK, BLOCK_D, WITH_MAD)
        out = (pid_bh.to(tl.int64) * tl.num_programs(0) + pid_n) * D + dims
        tl.store(MEAN + out, mean, mask=dmask)
        if WITH_MAD:
            tl.store(MAD + out, mad, mask=dmask)


def block_stats_triton(x: torch.Tensor, block: int, with_mad: bool = True):
    """Triton version of :func:`block_stats_reference` (same outputs)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    bsz, heads, length, dim = x.shape
    n = (length + block - 1) // block
    mean = torch.empty(bsz, heads, n, dim, dtype=torch.float32, device=x.device)
    mad = torch.empty_like(mean) if with_mad else mean  # MAD pointer unused without with_mad
    block_d = triton.next_power_of_2(max(dim, 16))
    chunk = chunk_rows(block, block_d)
    _block_stats_kernel[(n, bsz * heads)](
        x, mean, mad,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        heads, length, dim,
        BLOCK=block, CHUNK=chunk, BLOCK_D=block_d, WITH_MAD=with_mad,
        num_warps=8 if chunk * block_d >= 128 * 128 else 4,
    )
    counts = block_counts(length, block, n, x.device)
    return mean, (mad if with_mad else None), counts


def block_stats(x: torch.Tensor, block: int, with_mad: bool = True, backend: str = "auto"):
    """Per-block (mean, mad, counts); ``backend`` "auto" uses Triton where it runs."""
    from spbench.kernels.executor import triton_available  # noqa: PLC0415 - avoid an import cycle

    use_triton = backend == "triton" or (backend == "auto" and triton is not None and triton_available(x.device))
    if use_triton:
        return block_stats_triton(x, block, with_mad)
    return block_stats_reference(x, block, with_mad)
