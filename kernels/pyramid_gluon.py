"""The Gluon (Hopper, sm_90) path of the executor: a warp-specialized kernel for non-causal plans.

Same semantics as the Triton kernel (:mod:`spbench.kernels.pyramid_triton`)
over the set it supports (see :func:`unsupported`): non-causal plans with
any mix of levels 1/2/4/8, fp16/bf16, head dim 64 or 128, block_q 128 or
256, block_kv 64 or 128, contiguous K/V. ``run_plan`` dispatches here on
sm_90 when the call is in that set (``SPBENCH_EXECUTOR_KERNEL`` /
``kernel=`` force either path); the kernel is in :mod:`spbench.kernels.gluon_attn`.

Why a second kernel: the Triton kernel's inner loop tops out near 495
TFLOP/s on H200 (cuDNN reaches ~676) because Triton's pipeliner keeps the
softmax of a tile serialized with its matmuls. This one is written in Gluon
(Triton's explicit-layout dialect) in the FA3 style:

* one work item = 128 query rows of one (batch, head); four partitions:
  two 1-warp **loaders** (one for K, one for V) that walk the plan's
  entries level by level (:mod:`spbench.kernels.schedule`) and TMA-load
  tiles of ``BLOCK_N`` rows into ``STAGES``-deep shared-memory rings, and
  two 4-warp **consumer** warpgroups, each owning 64 query rows. A tile
  packs ``BLOCK_N / R`` entries of R rows (R = block_kv / p pooled rows at
  level p) through one TMA load of R rows each, the tile's entry indices
  read as one vector; an entry taller than a tile (a 128-row block in
  64-row tiles) is loaded a tile at a time. Why two loaders: a level-8
  tile of 64 rows is 8 copies of 8 rows per operand, and a clock64 trace
  of the kernel (H200, 32k, 40% of blocks at level 8) showed one loader
  warp for both operands busy ~90% of the time (waiting for a free slot
  only 5.7k of 50k cycles per item) while the consumers waited on K;
* separate ready/empty mbarriers for K and V, so ``QK^T`` of tile t can
  start before V of tile t has landed; an empty barrier completes when both
  consumers released the slot (count 2);
* inside a consumer the matmuls are async wgmma and software-pipelined:
  ``S_t = Q K_t^T`` and ``O += P_{t-1} V_{t-1}`` are issued back to back, the
  softmax of S_t runs while the PV wgmma is still on the tensor cores, and
  O is rescaled once that finishes. The two consumer warpgroups are
  independent partitions, so the warp schedulers interleave one's softmax
  with the other's matmuls (no explicit ping-pong barrier);
* exp2 softmax with the log2(e) scale folded in, fp32 accumulators. Clean
  tiles (only whole, unmasked entries) add log2(p) to the row max and the
  shift, at no per-element cost; the rest (the ragged last block, a tile's
  unfilled tail, a ragged pooled group with bias log2(size)) are masked.
  A level's partly filled last tile only has its unfilled tail cut (a
  compare per column inside the clean step; the per-level valid widths are
  one packed register per work item); only tiles of the ragged last KV
  block take the general masks, after the PV wgmma of the step finished
  (frees registers). An unfilled tail reloads the level's last entry and
  masks it, so no stale shared memory is ever multiplied (0 * NaN would
  poison the row). Why the split: a clock64 trace (H200, session 14) put
  the general masked step at ~4k extra cycles with 64-row tiles and ~17k
  with 128-row tiles, where a whole tile costs ~1.6k / ~2.8k; the tail cut
  took the pyramid mix at 32k x 12 in 128-row tiles from 2.35 to 1.89 ms
  (results/reference/gluon-s14/). The cut is a predicated select that
  whole tiles pay too; plans of level 1 only (at most one such tile per
  item) take it in a separate copy of the clean step instead: binary 0.10
  1.029x at 110k x 40 and 1.017x at 32k x 12, dense 1.017x at 32k, the
  pyramid mix unchanged, near-empty plans (1% of blocks) 0.95x. With
  pooled levels that copy made the mix 3-4% slower (one A/B each,
  results/reference/gluon-s15/), so there the cut stays in the one step;
* empty rows return zeros (lse -inf); epilogue ``row_scale * O +
  compensation`` and the natural-log LSE as in the Triton kernel. O is
  normalised by one reciprocal per row and leaves through shared memory and
  one TMA store per consumer (:func:`out_descriptor`; an ``out`` whose strides
  or base TMA cannot take gets the result copied in). A clock64 trace (H200,
  session 18, results/reference/gluon-s18/) put the old epilogue (a division
  per element and 16-bit stores from the accumulator layout) at ~5k cycles per
  work item, the new one at ~3k: 40% of the blocks at level 8 ran 0.608 vs
  0.681 ms, the pyramid mix 1.756 vs 1.827 ms, 40% level 1 4.50 vs 4.59 ms.

Work items are (128 query rows, batch*head) pairs; the grid is one program
per item, or with ``persistent`` one per SM looping over items (the rings
and a prefetch of the next item's Q and schedule counts carry over). With
64-row tiles the S = Q K^T wgmma takes Q from registers (``q_regs``): from
shared memory, Q and K together need about the whole shared-memory bandwidth
at that tile width. On H200 (32k x 12, pyramid mix 1:0.10,2:0.05,8:0.20,
kernel time from the profiler; results/reference/gluon-s13/) Q in registers
took the mix from 2.00 to 1.92 ms and the persistent grid on top to 1.84 ms
(a one-tile work item: 9.7 -> 7.7 us), so both are the default with 64-row
tiles. With 128-row tiles Q in registers spills (sm_90 compile), so it
stays off there. Overlapping items (an item's last PV wgmma issued with the
next item's first S, its epilogue run while that S computes) was correct
but 5-11% slower on sparse plans at 32k (results/reference/gluon-s15/); in
its first form an async wgmma result merged across a branch, and ptxas then
serialized every wgmma of the kernel (~20% slower; the sm_90 compile test
checks for it).

Launch config (see :func:`config`): ``BLOCK_N`` 128 for every plan, 2
pipeline stages, a persistent grid below :data:`LONG_KV` keys. Until
session 14 sparse plans below 64k keys took 64-row tiles (3 stages, Q in
registers, persistent): the general masked step made 128-row tiles lose
on them. With the tail cut, in same-process A/Bs on H200 (32k x 12,
results/reference/gluon-s14/) 128-row tiles with a persistent grid ran
the pyramid mix at 32000 keys in 1.78 vs 1.79-1.93 ms, binary 0.10 at
32768 in 1.18 vs 1.27 ms and 40% level 1 in 4.2 vs 4.4 ms (trace); only
near-empty plans (1% of the blocks: 1-3 tiles per work item) stay 10-20%
faster in 64-row tiles (0.13-0.22 ms calls). ``spbench kernel`` on the mix:
run 1.745-1.754 ms with 128-row tiles vs 1.88 ms with 64-row ones.
``SPBENCH_GLUON_CONFIG="block_n=64,stages=2,persistent=1,q_regs=1"`` pins any of them.
3 stages with 128-row tiles (224 KB of shared memory) are refused: in
session 15 they fit (229,824 bytes) and passed the GPU checks, but ran no
faster (same-process A/B of this kernel: -1.5% to +2.0% by case, within
noise; results/reference/gluon-s15/b_ab_crossitem_serialized.json,
sides ``default@before`` / ``s3@before``). History: with the first loader (one scalar index load per TMA
copy) 3 stages gave wrong results / illegal addresses with pooled levels
(results/reference/gluon_exec_h200_phase2.json); since the loader reads a
tile's indices as one vector they pass every GPU check (cause of the old
failure not pinned down).

A last-round split (a persistent grid's short last round cut into up to 4 tile ranges per item, merged
by a small kernel) was built in session 15 and timed in session 16 (H200, same process, graph replays):
0.955x on the mix at 32000 x 12, 0.945x at 32768, 0.97x binary, 0.99x dense. It was removed in session 17;
the code is in git history (``kernels/merge_parts.py`` before that session).

Interleaved tiles (``ilv``, on by default where :func:`interleaves` allows: head dim 128, a key length
that is a multiple of 8). With head dim 128 an NVMMA tile keeps each 64-column half's rows together, and a
128-byte swizzle caps a TMA box at 64 columns, so every load took one box per half: 32 per operand for a
128-row tile of level 8 at block_kv 64, which cost ~1.3x a level-1 tile (session 16; cp.async loads were
0.58x and two loader warps per operand 0.81x on level 8, so neither the copy engine's queue nor the
issuing warp was the fix). Interleaved rings hold 8-row groups with both halves side by side
([group, half, 8, 64]; a linear shared layout that wgmma reads with a 2 KB group stride), and every load
is one box of [1, rows / 8, 2, 8, 64] through a rank-5 descriptor ([heads, groups, halves, 8, 64], the
half dimension striding 64 elements inside a row): half the copies at every level. A head's last 8-row
group may run past its rows: into the next head's (masked) or, for the last head, into room the pyramid
leaves zeroed (:func:`has_group_room`); K and V are the caller's, hence the multiple of 8.
Measured on H200 (session 17, results/reference/gluon-s17/): level 8 at block_kv 64 x p 1.313 vs 1.439
at ncu's locked clocks (bk128 1.269 vs 1.281); same-process graph replays, 40% level 8 0.66-0.70 vs 0.70-0.76
ms, the pyramid mix at 32000 x 12 1.61-1.76 vs 1.74-1.79 ms by round, dense and binary within noise.
A first form interleaved only level-8 tiles and read them in loops of their own (the other levels stayed
NVMMA); the extra loop copies made the mix 7% slower (results/reference/gluon-s17/a_ilv8_loopsplit/).

``run_plan``'s ``auto`` uses this path for plans of any levels
(:data:`AUTO_LEVEL_MASK`): on H200 it was 1.2-1.3x the Triton kernel on
level-1 plans and 1.17x on the pyramid mix 1:0.10,2:0.05,8:0.20, and faster
at every single level of the per-level cost table (GPU checks pass for all
levels).
"""

from __future__ import annotations

import functools

import torch

from spbench.errors import SpbenchError
from spbench.kernels.schedule import schedule_for
from spbench.method import check_out
import os

from spbench.kernels import tuning
from spbench.kernels.gluon_attn import BLOCK_M, CONSUMER_REGS, HAVE_GLUON, LOADER_REGS, MAXNREG, load_rows
from spbench.plan import LEVELS, Plan

LOG2E = 1.4426950408889634

if HAVE_GLUON:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from spbench.kernels.gluon_attn import _gluon_fwd, box_layout


CONFIG_ENV = "SPBENCH_GLUON_CONFIG"
CONFIG_FIELDS = ("block_n", "stages", "persistent", "q_regs", "ilv")
#: levels ``run_plan``'s auto mode sends here (bit r: level 2**r); see the module docstring
AUTO_LEVEL_MASK = 0b1111
#: pipeline depths that passed the GPU checks (see the module docstring for 3)
STAGES_OK = (2, 3)
#: tile height when not pinned (module docstring)
DEFAULT_BLOCK_N = 128
#: from this key length on, 128-row tiles run one program per work item, below it a persistent grid (one program
#: per SM looping over items): at 32k x 12 persistent was 0.6-1.1% faster dense and faster on every sparse plan,
#: at 110k x 40 slower: pyramid mix 2.7%, dense 1.0%, binary 0.10 0.8% (H200, results/reference/gluon-s13/,
#: gluon-s14/; between the two lengths the threshold is a guess)
LONG_KV = 65536
#: pipeline depth per tile height when not pinned (3 stages only tested with 64-row tiles)
DEFAULT_STAGES = {64: 3, 128: 2}
#: interleaved tiles where the call allows them (:func:`interleaves`) when not pinned (``ilv``)
DEFAULT_ILV = True
#: per tile height when not pinned: S = Q K^T with Q in registers (wgmma A operand), so the S wgmma reads only K
#: from shared memory (with 64-row tiles Q and K together need about the whole shared-memory bandwidth); with
#: 128-row tiles the consumer would spill (sm_90 compile)
DEFAULT_Q_REGS = {64: True, 128: False}


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
        return "needs block_q in (128, 256), block_kv in (64, 128) and a tile of 64 or 128 rows"
    if not (k.is_contiguous() and v.is_contiguous()) or k.data_ptr() % 16 or v.data_ptr() % 16:
        return "needs contiguous, 16-byte aligned k and v"
    if k.shape[0] * k.shape[1] * k.shape[2] >= 2**31 or q.shape[2] * q.stride(2) >= 2**31:
        return "row offsets beyond int32"
    return None


def parse_config(text: str) -> dict[str, int]:
    """The fields a ``SPBENCH_GLUON_CONFIG``-style string pins: ``"block_n=64,stages=3"`` -> {"block_n": 64, "stages": 3}."""
    fields: dict[str, int] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = (x.strip() for x in item.partition("="))
        if not sep or name not in CONFIG_FIELDS or not value.isdigit():
            raise SpbenchError(f"malformed {CONFIG_ENV} item {item!r}: expected block_n=64|128, stages=2|3, persistent=0|1, q_regs=0|1 "
                               "or ilv=0|1")
        fields[name] = int(value)
    if fields.get("block_n", 64) not in (64, 128) or any(fields.get(f, 0) not in (0, 1) for f in ("persistent", "q_regs", "ilv")):
        raise SpbenchError(f"{CONFIG_ENV}: block_n must be 64 or 128, persistent, q_regs and ilv 0 or 1, got {fields}")
    return fields


@functools.lru_cache(maxsize=8)
def _pinned(text: str) -> tuple[tuple[str, int], ...]:
    # parsed once per distinct string: every launch reads it twice (config, interleave_enabled)
    return tuple(parse_config(text).items())


def pinned_fields() -> dict[str, int]:
    """The fields ``SPBENCH_GLUON_CONFIG`` pins now (a malformed value raises SpbenchError)."""
    return dict(_pinned(os.environ.get(CONFIG_ENV, "")))


def config(kv_len: int) -> tuple[int, int, bool, bool]:
    """(block_n, stages, persistent, q_regs): pinned through ``SPBENCH_GLUON_CONFIG``, else the measured default
    (module docstring)."""
    fields = pinned_fields()
    block_n = fields.get("block_n", DEFAULT_BLOCK_N)
    stages, persistent, q_regs = tile_defaults(block_n, kv_len)
    stages = fields.get("stages", stages)
    check_stages(block_n, stages)
    return block_n, stages, bool(fields.get("persistent", persistent)), bool(fields.get("q_regs", q_regs))


def tile_defaults(block_n: int, kv_len: int) -> tuple[int, bool, bool]:
    """(stages, persistent, q_regs) measured best for ``block_n``-row tiles and ``kv_len`` keys (module docstring):
    64-row tiles 3 stages, persistent, Q in registers; 128-row tiles 2 stages, persistent below LONG_KV keys."""
    return DEFAULT_STAGES[block_n], block_n == 64 or kv_len < LONG_KV, DEFAULT_Q_REGS[block_n]


def interleave_enabled() -> bool:
    """Whether tiles load interleaved where they can (``ilv`` of ``SPBENCH_GLUON_CONFIG``, else the default)."""
    return bool(pinned_fields().get("ilv", DEFAULT_ILV))


def interleaves(k: torch.Tensor, pooled: list[torch.Tensor], ilv: bool | None = None) -> bool:
    """Whether a call with keys ``k`` and the plan's ``pooled`` K/V tensors loads interleaved tiles (``ilv``: on /
    off, None: :func:`interleave_enabled`): head dim 128 (at 64 a row is one box already), a key length that is a
    multiple of 8 (the last head's last group must not run past K and V: their storage is the caller's), and
    pooled tensors with room for their last group (the pyramid's own have it)."""
    wanted = interleave_enabled() if ilv is None else bool(ilv)
    return wanted and k.shape[-1] == 128 and k.shape[2] % 8 == 0 and all(has_group_room(t) for t in pooled)


def check_stages(block_n: int, stages: int) -> None:
    if stages not in STAGES_OK or (stages == 3 and block_n != 64):
        raise SpbenchError(f"the Gluon path runs 2 stages, or 3 with 64-row tiles; got {stages} stages with {block_n}-row tiles")


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _gl_dtype(dtype: torch.dtype):
    return gl.bfloat16 if dtype == torch.bfloat16 else gl.float16


@functools.lru_cache(maxsize=None)
def _smem_layout(rows: int, d: int, dtype: torch.dtype):
    # cached: building it costs more host time than the rest of a launch (8 descriptors per call)
    return gl.NVMMASharedLayout.get_default_for([rows, d], _gl_dtype(dtype))


def descriptor(t: torch.Tensor, rows: int):
    """TMA descriptor over the [B*Hkv*L, D] view of a contiguous [B, Hkv, L, D] tensor, ``rows`` rows per load."""
    d = t.shape[-1]
    return TensorDescriptor.from_tensor(t.view(-1, d), [rows, d], _smem_layout(rows, d, t.dtype))


@functools.lru_cache(maxsize=None)
def _box_layout(dtype: torch.dtype, rank: int):
    return box_layout(_gl_dtype(dtype), rank)  # the kernel's own (a constexpr function, callable here)


def interleaved_descriptor(t: torch.Tensor, rows: int):
    """TMA descriptor for interleaved tiles over a contiguous [B, Hkv, L, D] tensor, ``rows`` rows (a multiple
    of 8) per load: the rows seen as [B*Hkv heads, ceil(L / 8) groups, D / 64 halves, 8, 64] (the half dimension
    strides 64 elements, inside a row), so one box of [1, rows / 8, halves, 8, 64] lands as the interleaved
    layout's [group, half, row, col] (:func:`spbench.kernels.gluon_attn._interleaved_bases`). A head's last
    group may run past its L rows into the next head's (masked) or, for the last head, into the tail room
    that :func:`has_group_room` checks."""
    bsz, heads, length, d = t.shape
    shape = [bsz * heads, -(-length // 8), d // 64, 8, 64]
    return TensorDescriptor(t, shape, [length * d, 8 * d, 64, d, 1], [1, rows // 8, d // 64, 8, 64], _box_layout(t.dtype, 5))


def tma_storable(t: torch.Tensor) -> bool:
    """Whether the kernel can TMA-store into ``t``: 16-byte aligned, unit last stride, other strides whole 16 bytes."""
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1])


def out_descriptor(out: torch.Tensor):
    """TMA descriptor over [B, H, L, D] ``out`` (any strides :func:`tma_storable` allows), boxes of a consumer's
    [1, 1, 64, D] rows; the descriptor's bounds clip rows past L."""
    return TensorDescriptor(out, list(out.shape), list(out.stride()), [1, 1, 64, out.shape[-1]], _box_layout(out.dtype, 4))


def has_group_room(t: torch.Tensor) -> bool:
    """Whether the storage of contiguous [B, Hkv, L, D] ``t`` reaches the end of its last head's last 8-row group
    (the pooled pyramid leaves that room, zeroed: :func:`spbench.kernels.pool.build_pyramid`)."""
    bsz, heads, length, d = t.shape
    end = t.storage_offset() + ((bsz * heads - 1) * length + -(-length // 8) * 8) * d
    return t.untyped_storage().nbytes() >= end * t.element_size()


def run_plan_gluon(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: Plan,
    scale: float | None = None,
    return_lse: bool = False,
    pyramid=None,
    out: torch.Tensor | None = None,
    block_n: int | None = None,
    stages: int | None = None,
    persistent: bool | None = None,
    q_regs: bool | None = None,
    ilv: bool | None = None,
):
    """Run ``plan`` with the Gluon kernel (see :func:`unsupported` for the supported set).

    Arguments as :func:`spbench.kernels.pyramid_triton.run_plan`; ``block_n`` /
    ``stages`` / ``persistent`` / ``q_regs`` override :func:`config`, ``ilv``
    :func:`interleave_enabled`.
    """
    from spbench.kernels.pyramid_triton import _check, _extra, _store_ok, pyramid_for  # noqa: PLC0415

    _check(q, k, v, plan)
    check_out(q, out)
    cfg_n, cfg_s, cfg_p, cfg_q = config(k.shape[2])
    if block_n and block_n != cfg_n:  # another tile height than configured: that height's defaults
        cfg_n, (cfg_s, cfg_p, cfg_q) = block_n, tile_defaults(block_n, k.shape[2])
    block_n = cfg_n
    stages = stages or cfg_s
    persistent = cfg_p if persistent is None else bool(persistent)
    q_regs = cfg_q if q_regs is None else bool(q_regs)
    check_stages(block_n, stages)
    reason = unsupported(q, k, v, plan, block_n)
    if reason:
        raise SpbenchError(f"the Gluon path {reason}")
    if out is not None and not _store_ok(out):
        raise SpbenchError("the Gluon path needs an out tensor with a contiguous last dim and int32 row offsets")
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
    # the kernel TMA-stores its output: an out it cannot store into gets the result copied in
    dest = out if tma_storable(out) else torch.empty_like(q, memory_format=torch.contiguous_format)
    mask = sched.level_mask
    lens = [(lk + p - 1) // p for p in (2, 4, 8)]
    levels = {1: (k, v)}
    if mask & ~1:
        pyr = pyramid_for(k, v, plan, pyramid, mask)
        levels.update({p: (pyr.k[p].contiguous(), pyr.v[p].contiguous()) for p in (2, 4, 8) if p in pyr.k})
    interleaved = interleaves(k, [t for p, kv in levels.items() if p > 1 for t in kv], ilv)
    make = interleaved_descriptor if interleaved else descriptor
    descs = []
    for p in (1, 2, 4, 8):  # a level not in the plan repeats level 1's: LEVEL_MASK compiles its loads out
        rows = load_rows(plan.block_kv, block_n, p)
        descs += [make(t, rows) for t in levels.get(p, levels[1])]
    n_items = (lq + BLOCK_M - 1) // BLOCK_M * bsz * hq
    grid = (min(n_items, _sm_count(q.device)) if persistent else n_items,)
    _gluon_fwd[grid](
        q, *descs, out_descriptor(dest), lse, row_scale if row_scale is not None else out, comp if comp is not None else out,
        sched.idx, sched.count,
        scale * LOG2E, lq, lk, *lens, hq, hq // hkv, nqb, sched.width, bsz * hq,
        q.stride(0), q.stride(1), q.stride(2),
        BLOCK_Q=plan.block_q, BLOCK_KV=plan.block_kv, BLOCK_N=block_n, D=d, STAGES=stages, LEVEL_MASK=mask,
        HAS_SCALE=row_scale is not None, HAS_COMP=comp is not None, RETURN_LSE=return_lse,
        CONSUMER_REGS=CONSUMER_REGS, LOADER_REGS=LOADER_REGS, Q_REGS=q_regs, ILV=interleaved,
        num_warps=4, maxnreg=MAXNREG,
    )
    tuning.record_launch(f"GLUON,block_n={block_n},stages={stages},persistent={int(persistent)},q_regs={int(q_regs)}"
                         + f",ilv={int(interleaved)}", "gluon",
                         kernel="gluon", BLOCK_N=block_n, num_stages=stages, persistent=persistent, q_regs=q_regs, ilv=interleaved,
                         levels=[p for r, p in enumerate(LEVELS) if mask >> r & 1])
    if dest is not out:
        out.copy_(dest)
    return (out, lse) if return_lse else out


__all__ = ["HAVE_GLUON", "AUTO_LEVEL_MASK", "run_plan_gluon", "unsupported", "config", "parse_config", "descriptor",
           "interleaved_descriptor", "interleaves", "has_group_room", "out_descriptor", "tma_storable"]
