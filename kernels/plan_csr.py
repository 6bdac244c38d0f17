"""Level map -> plan CSR in two row-wise Triton passes (the GPU path of ``Plan.from_levels``).

The torch path of :func:`spbench.plan.Plan.from_levels` makes many passes
over the ``[B, H, NQ, NKV]`` map: int16 copies for the validity check and
the planned area, an int64 cumsum for the slots, an int64 arange, two
zero-filled outputs, two int64-indexed scatters and two slice copies. On a
110k-token, 40-head map that is over 2 ms of an H200. Here one program per
(query block, batch*head) holds its row in registers:

* ``_row_stats``: active count, sum of area x 8 / level (exact int64) and
  a bad-level flag per row (the host reads their max / sum / any in the
  plan's one sync, which also fixes the CSR width);
* ``_compact_rows``: the slot of an active block is an inclusive cumsum of
  the active mask minus one; index and level are stored there, and the
  slots from the row's count up to the width are zeroed (no memset).

Two reads of the int8 map and one write of the CSR, nothing else.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_stats(LV, AREA, COUNTS, AREA8, BAD, nq, nkv, NKV_P2: tl.constexpr):
    row = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    js = tl.arange(0, NKV_P2)
    inb = js < nkv
    r = bh * nq + row
    lv = tl.load(LV + r * nkv + js, mask=inb, other=0).to(tl.int32)
    active = lv > 0
    w8 = tl.where(active, 8 // tl.maximum(lv, 1), 0)  # 8, 4, 2, 1 for levels 1, 2, 4, 8
    area = tl.load(AREA + row * nkv + js, mask=inb, other=0)
    bad = (lv < 0) | (lv > 8) | ((lv & (lv - 1)) != 0)  # not in {0, 1, 2, 4, 8}
    tl.store(COUNTS + r, tl.sum(active.to(tl.int32), axis=0))
    tl.store(AREA8 + r, tl.sum(w8.to(tl.int64) * area, axis=0))
    tl.store(BAD + r, tl.sum(bad.to(tl.int32), axis=0))


@triton.jit
def _compact_rows(LV, IDX, OUT_LV, nq, nkv, width, NKV_P2: tl.constexpr):
    row = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    js = tl.arange(0, NKV_P2)
    inb = js < nkv
    r = bh * nq + row
    lv = tl.load(LV + r * nkv + js, mask=inb, other=0)
    active = lv > 0
    slot = tl.cumsum(active.to(tl.int32), axis=0) - 1
    count = tl.sum(active.to(tl.int32), axis=0)
    out = r * width
    tl.store(IDX + out + slot, js, mask=active)
    tl.store(OUT_LV + out + slot, lv, mask=active)
    pad = (js >= count) & (js < width)  # width <= nkv <= NKV_P2
    tl.store(IDX + out + js, tl.zeros([NKV_P2], tl.int32), mask=pad)
    tl.store(OUT_LV + out + js, tl.zeros([NKV_P2], tl.int8), mask=pad)


def _grid(levels: torch.Tensor) -> tuple[int, int]:
    return levels.shape[-2], max(1, levels[..., 0, 0].numel())


def row_stats(levels: torch.Tensor, areas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of an int8 ``[B, H, NQ, NKV]`` map: (active count int32, sum of area x 8 / level int64, bad entries int32), each ``[B, H, NQ]``.

    ``areas`` int64 ``[NQ, NKV]`` (:func:`spbench.plan.area_table`).
    """
    nq, nkv = levels.shape[-2:]
    lead = levels.shape[:-1]
    counts = torch.empty(lead, dtype=torch.int32, device=levels.device)
    area8 = torch.empty(lead, dtype=torch.int64, device=levels.device)
    bad = torch.empty(lead, dtype=torch.int32, device=levels.device)
    if levels.numel():
        _row_stats[_grid(levels)](levels, areas.contiguous(), counts, area8, bad, nq, nkv, NKV_P2=triton.next_power_of_2(nkv), num_warps=4)
    else:
        counts.zero_(), area8.zero_(), bad.zero_()
    return counts, area8, bad


def compact_rows(levels: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_indices int32, kv_levels int8), each ``[B, H, NQ, width]``: a row's active blocks ascending, zeros after."""
    nq, nkv = levels.shape[-2:]
    if not 1 <= width <= max(nkv, 1):
        raise ValueError(f"width must be in [1, {max(nkv, 1)}], got {width}")
    shape = (*levels.shape[:-1], width)
    indices = torch.empty(shape, dtype=torch.int32, device=levels.device)
    lv = torch.empty(shape, dtype=torch.int8, device=levels.device)
    if levels.numel():
        _compact_rows[_grid(levels)](levels, indices, lv, nq, nkv, width, NKV_P2=triton.next_power_of_2(nkv), num_warps=4)
    else:
        indices.zero_(), lv.zero_()
    return indices, lv
