"""fp8 (e4m3) copies of Q / K for the block scorers, one scale per group of rows.

Scoring only ranks blocks, so its matrix products can run on Hopper's fp8
tensor cores at twice the bf16 rate. Each group of ``group`` consecutive
rows (one row for psa's sampled rows, the ``stride`` rows of one reshaped
row for xattention) is scaled so its largest magnitude maps to 448 (e4m3's
largest finite value), rounded to nearest-even and stored as
``float8_e4m3fn``; the group's scale ``amax / 448`` (fp32) multiplies the
product back. A zero group gets scale 0 and zeros.

Rounding happens in fp32 bit arithmetic before the cast, so the cast itself
is exact in e4m3's normal range: the Triton interpreter (whose fp32 -> fp8
cast drops a mantissa carry) and the GPU give the same bytes there; values
below e4m3's smallest normal (2^-6 of the scale unit, i.e. under 3.5e-5 of
the group's largest entry) may differ in the last subnormal step.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from spbench.errors import SpbenchError

FP8_MAX = 448.0
FP8_DTYPE = getattr(torch, "float8_e4m3fn", None)
SCORE_DTYPES = ("auto", "fp8", "input")


@triton.jit
def round_to_e4m3(x):
    """fp32 -> nearest (ties to even) value with a 3-bit mantissa, clamped to +-448."""
    bits = x.to(tl.int32, bitcast=True)
    lsb = (bits >> 20) & 1
    bits = (bits + 0x7FFFF + lsb) & -0x100000  # drop the 20 low mantissa bits, rounding
    y = bits.to(tl.float32, bitcast=True)
    return tl.minimum(tl.maximum(y, -448.0), 448.0)


@triton.jit
def quantize_tile(x, ROWS: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr):
    """A ``[ROWS, D]`` tile -> (e4m3 tile, per-group fp32 scales ``[ROWS // GROUP]``).

    Row maxima first, then the (small) group reduction and its broadcast back
    to rows: no 3-D reshape of the whole tile (layout shuffles through
    shared memory on the GPU).
    """
    x = x.to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    if GROUP > 1:
        amax = tl.max(tl.reshape(amax, [ROWS // GROUP, GROUP]), axis=1)
    inv = tl.where(amax > 0.0, 448.0 / tl.maximum(amax, 1e-30), 0.0)
    if GROUP > 1:
        inv = tl.reshape(tl.broadcast_to(inv[:, None], [ROWS // GROUP, GROUP]), [ROWS])
    y = round_to_e4m3(x * inv[:, None])
    return y.to(tl.float8e4nv), amax / 448.0


@triton.jit
def interleaved_source(r, G: tl.constexpr, S: tl.constexpr):
    """Row ``r`` of a list interleaved in groups of ``G`` blocks of ``S`` -> its row in block-major order.

    Row ``grp * G * S + s * G + j`` holds row ``s`` of block ``grp * G + j``
    (``G = 1``: the identity). A permutation of every whole group.
    """
    if G == 1:
        return r
    return ((r // (G * S)) * G + r % G) * S + (r // G) % S


def interleaved_source_torch(r: torch.Tensor, g: int, s: int) -> torch.Tensor:
    """:func:`interleaved_source` on a torch tensor (host-side checks and references)."""
    return ((r // (g * s)) * g + r % g) * s + (r // g) % s


@triton.jit
def _quantize_groups(
    X, Y, SCALE,
    sxb, sxh, sxl, sxd,
    heads, length, rows_pad,
    GROUP: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, IG: tl.constexpr, IS: tl.constexpr,
):
    """Y[bh, r] = e4m3(X[b, h, src(r)] / scale[bh, r // GROUP]); source rows past ``length`` are zeros.

    src: groups of GROUP rows taken in the order :func:`interleaved_source`
    (IG blocks of IS groups) gives; IG = 1 keeps the order.
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rows = pid * ROWS + tl.arange(0, ROWS)
    src_rows = interleaved_source(rows // GROUP, IG, IS) * GROUP + rows % GROUP
    dims = tl.arange(0, D)
    src = X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh
    x = tl.load(src + src_rows.to(tl.int64)[:, None] * sxl + dims[None, :] * sxd, mask=(src_rows < length)[:, None], other=0.0)
    y, scale = quantize_tile(x, ROWS, GROUP, D)
    tl.store(Y + bh.to(tl.int64) * rows_pad * D + rows.to(tl.int64)[:, None] * D + dims[None, :], y)
    groups = pid * (ROWS // GROUP) + tl.arange(0, ROWS // GROUP)
    tl.store(SCALE + bh.to(tl.int64) * (rows_pad // GROUP) + groups, scale)


def interpreting() -> bool:
    """Triton kernels run through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def fp8_available(device: torch.device) -> bool:
    """fp8 scoring runs here: the interpreter, or a CUDA GPU with fp8 tensor cores (sm_89+)."""
    if FP8_DTYPE is None or not hasattr(tl, "float8e4nv"):
        return False
    if interpreting():
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def use_fp8(score_dtype: str, x: torch.Tensor, triton_scorer: bool) -> bool:
    """Resolve a ``score_dtype`` knob: ``auto`` is fp8 for fp16/bf16 inputs on fp8-capable GPUs.

    ``fp8`` forces it (the torch reference scorer then scores the same
    quantized values); ``input`` scores in the inputs' dtype.
    """
    if score_dtype not in SCORE_DTYPES:
        raise SpbenchError(f"score_dtype must be one of {', '.join(SCORE_DTYPES)}, got {score_dtype!r}")
    if score_dtype == "input":
        return False
    if score_dtype == "fp8":
        if FP8_DTYPE is None:
            raise SpbenchError("score_dtype=fp8 needs a torch with float8_e4m3fn")
        if triton_scorer and not fp8_available(x.device):
            raise SpbenchError(f"score_dtype=fp8 needs fp8 tensor cores (sm_89 or newer); {x.device} has none")
        return True
    return triton_scorer and x.device.type == "cuda" and not interpreting() and x.dtype in (torch.float16, torch.bfloat16) and fp8_available(x.device)


def padded_rows(length: int, group: int) -> int:
    """Rows of the quantized copy: ``length`` rounded up to whole groups."""
    return math.ceil(length / group) * group


def quantize_rows(
    x: torch.Tensor, group: int, rows_pad: int | None = None, interleave: int = 1, block: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[B, H, L, D]`` (any strides) -> (e4m3 ``[B, H, rows_pad, D]`` contiguous, fp32 scales ``[B, H, rows_pad // group]``).

    ``rows_pad`` (default: L rounded up to whole groups) must be a multiple
    of ``group``; rows past L are zeros with scale 0. ``interleave`` > 1:
    the groups are written interleaved (:func:`interleaved_source` with
    ``interleave`` blocks of ``block`` groups; rows_pad a multiple of
    ``interleave * block * group``), scales in the same order. Triton kernel
    on CUDA and under the interpreter, else :func:`quantize_rows_reference`.
    """
    bsz, heads, length, dim = x.shape
    rows_pad = padded_rows(length, group) if rows_pad is None else rows_pad
    if group < 1 or group & (group - 1) or rows_pad % group or rows_pad < length:
        raise ValueError(f"quantize_rows: group {group} must be a power of two dividing rows_pad {rows_pad} >= length {length}")
    if interleave < 1 or rows_pad % (interleave * block * group):
        raise ValueError(f"quantize_rows: rows_pad {rows_pad} must hold whole interleave groups of {interleave} x {block} x {group} rows")
    if not (x.device.type == "cuda" or interpreting()):
        return quantize_rows_reference(x, group, rows_pad, interleave, block)
    rows = max(8192 // dim, group)  # a tile holds whole groups; ~8K elements per program
    alloc = math.ceil(rows_pad / rows) * rows
    y = torch.empty(bsz, heads, alloc, dim, dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty(bsz, heads, alloc // group, dtype=torch.float32, device=x.device)
    _quantize_groups[(alloc // rows, bsz * heads)](x, y, scale, *x.stride(), heads, length, alloc, GROUP=group, D=dim, ROWS=rows, IG=interleave, IS=block, num_warps=8)
    if alloc != rows_pad:
        y, scale = y[:, :, :rows_pad].contiguous(), scale[:, :, : rows_pad // group].contiguous()
    return y, scale


def quantize_rows_reference(
    x: torch.Tensor, group: int, rows_pad: int | None = None, interleave: int = 1, block: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch :func:`quantize_rows` (same rounding through torch's RNE fp8 cast; the interleave by indexing)."""
    bsz, heads, length, dim = x.shape
    rows_pad = padded_rows(length, group) if rows_pad is None else rows_pad
    xf = torch.zeros(bsz, heads, rows_pad, dim, dtype=torch.float32, device=x.device)
    xf[:, :, :length] = x.float()
    g = xf.view(bsz, heads, rows_pad // group, group * dim)
    amax = g.abs().amax(-1)
    inv = torch.where(amax > 0, FP8_MAX / amax.clamp(min=1e-30), torch.zeros_like(amax))
    y = (g * inv[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    scale = amax / FP8_MAX
    if interleave > 1:
        src = interleaved_source_torch(torch.arange(rows_pad // group, device=x.device), interleave, block)
        y, scale = y[:, :, src], scale[:, :, src]
    return y.reshape(bsz, heads, rows_pad, dim), scale


def fp8_values(x: torch.Tensor, group: int) -> torch.Tensor:
    """fp32 ``x`` as the fp8 scorers see it (quantized per group of rows): the reference scorers' input."""
    return dequantize_rows(*quantize_rows_reference(x, group), x.shape[2])


def dequantize_rows(y: torch.Tensor, scale: torch.Tensor, length: int) -> torch.Tensor:
    """fp32 values the fp8 scorers multiply: ``y * scale`` for the first ``length`` rows."""
    group = y.shape[2] // scale.shape[2]
    return (y.float() * scale.repeat_interleave(group, dim=2)[..., None])[:, :, :length]
