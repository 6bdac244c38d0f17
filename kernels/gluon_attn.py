"""The Gluon (Hopper, sm_90) kernel of the executor's warp-specialized path (levels 1/2/4/8,
non-causal); host code, design notes and known limits in :mod:`spbench.kernels.pyramid_gluon`.

This module imports only triton (no torch, no spbench), so the kernel can be
compiled for sm_90 on a machine without a GPU: :func:`compile_sm90`.
"""

from __future__ import annotations

try:  # Gluon is experimental: its absence (or an older API) only disables this path.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: F401 - the host needs it: part of the availability check

    HAVE_GLUON = all(hasattr(gl, name) for name in ("warp_specialize", "NVMMADistributedLayout", "allocate_shared_memory")) and hasattr(
        tma, "async_copy_global_to_shared"
    )
except Exception:  # noqa: BLE001 - any import problem means "no Gluon"
    HAVE_GLUON = False

#: query rows per program (two consumer warpgroups of 64 rows)
BLOCK_M = 128
SUB_M = 64
#: per-partition register budgets (setmaxnreg): consumers, loader
CONSUMER_REGS = 232
LOADER_REGS = 32
MAXNREG = 168  # 12 warps x 32 threads x 168 <= 64K registers


def _interleaved_bases(rows: int, d: int) -> list[list[int]]:
    """Offset bases (element offset bit -> (row, col)) of a [rows, d] 16-bit tile stored as 8-row groups, each
    group its ``d // 64`` 64-column halves one after the other ([group, half, 8, 64]), with the 128-byte swizzle
    inside each 8 x 64 atom (the 16-byte chunk index XOR the row within the group). NVMMA's own layout keeps a
    half's rows together instead ([half, rows, 64]), so a load of whole rows takes one TMA box per half; in this
    one a load's rows are contiguous, one box (:func:`_load_tile`). wgmma reads it with a stride of ``d // 64``
    KB between 8-row groups."""
    bases = [[0, 1], [0, 2], [0, 4], [0, 8], [0, 16], [0, 32], [1, 8], [2, 16], [4, 32]]
    bases += [[0, h] for h in (64, 128) if h < d]
    bases += [[r, 0] for r in (8, 16, 32, 64, 128) if r < rows]
    return bases


if HAVE_GLUON:

    _interleaved_bases = gluon.constexpr_function(_interleaved_bases)  # callable while a kernel is traced

    @gluon.constexpr_function
    def interleaved_layout(rows, d):
        """The ring's shared layout for wgmma when its tiles are interleaved (:func:`_interleaved_bases`)."""
        return gl.SharedLinearLayout(offset_bases=_interleaved_bases(rows, d))

    @gluon.constexpr_function
    def box_layout(dtype, rank):
        """The 128-byte-swizzled shared layout of rank ``rank`` that the kernel's TMA boxes use (the host builds
        its descriptors with the same): an interleaved load's [1, groups, halves, 8, 64] (rank 5), a consumer's
        64 output rows ([64, D], rank 2) and the output descriptor's [1, 1, 64, D] box over [B, H, L, D]
        (rank 4), which are the same bytes, so the kernel views the one as the other."""
        return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=dtype.primitive_bitwidth, rank=rank)

    @gluon.jit
    def _tile_rows(idx_ptr, n, tl, R: gl.constexpr, BLOCK_N: gl.constexpr, LR: gl.constexpr):
        """Source rows (relative to the level's head slab) of tile tl's ``BLOCK_N // LR`` loads, as one vector.

        An entry owns R rows of its level's tensor; one TMA load moves
        ``LR = min(R, BLOCK_N)`` rows (the descriptor's box). Reading the
        tile's entry indices in one vector load keeps the loader from
        waiting on one dependent global load per TMA copy: at level 8 a
        tile is 8-16 copies. Past the last entry (a tile's unfilled tail)
        the last entry is reloaded; the consumer masks it.
        """
        NL: gl.constexpr = BLOCK_N // LR
        # every lane holds the whole vector, so picking one entry is in-thread (no shuffles)
        j = gl.arange(0, NL, layout=gl.BlockedLayout([NL], [32], [1], [0]))
        g = tl * BLOCK_N + j * LR
        e = gl.minimum(g // R, n - 1)
        blk = gl.load(idx_ptr + e, mask=e >= 0, other=0).to(gl.int32)  # e < 0 only for an empty level
        return blk * R + g % R

    @gluon.jit
    def _load_tile(desc, bufs, ready, empty, rows, t, head, head_len, LR: gl.constexpr, BLOCK_N: gl.constexpr,
                   STAGES: gl.constexpr):
        """TMA-load tile t (ring slot t % STAGES) from the rows of :func:`_tile_rows` (rows of KV head ``head``,
        whose slab is ``head_len`` rows), ``LR`` rows per load, once both consumers freed the slot.

        A rank-5 descriptor ([heads, groups, halves, 8, 64], boxes of [1, LR / 8, halves, 8, 64]) loads an
        interleaved ring (:func:`_interleaved_bases`): one box per load fills its rows' 8-row groups with both
        64-column halves each, through the ring's [loads, 1, LR / 8, halves, 8, 64] view."""
        ILV: gl.constexpr = len(desc.block_type.shape) == 5
        NL: gl.constexpr = BLOCK_N // LR
        slot = t % STAGES
        mbarrier.wait(empty.index(slot), ((t // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(slot), desc.block_type.nbytes * NL)
        j = gl.arange(0, NL, layout=rows.type.layout)
        if ILV:
            loads = bufs._reinterpret(bufs.dtype, [STAGES * NL, 1, LR // 8, desc.block_type.shape[2], 8, 64],
                                      box_layout(bufs.dtype, 5))
        for i in gl.static_range(NL):
            r = gl.max(gl.where(j == i, rows, 0), axis=0)  # load i's first row, as a scalar (rows are >= 0)
            if ILV:
                tma.async_copy_global_to_shared(desc, [head, r // 8, 0, 0, 0], ready.index(slot), loads.index(slot * NL + i))
            else:
                tma.async_copy_global_to_shared(desc, [head * head_len + r, 0], ready.index(slot), bufs.index(slot).slice(i * LR, LR))

    @gluon.jit
    def _load_level(desc, bufs, ready, empty, idx_ptr, n, t0, head, head_len, R: gl.constexpr, BLOCK_N: gl.constexpr,
                    STAGES: gl.constexpr):
        """The tiles of one level (n entries of R rows), ring positions from t0 on; returns the next position."""
        # rows per load: the descriptor's box ([rows, D], or [1, rows / 8, halves, 8, 64] when interleaved)
        LR: gl.constexpr = desc.block_type.shape[1] * 8 if len(desc.block_type.shape) == 5 else desc.block_type.shape[0]
        tiles = _tiles(n, R, BLOCK_N)
        for tl in range(0, tiles):
            rows = _tile_rows(idx_ptr, n, tl, R, BLOCK_N, LR)  # issued before the wait for a free slot, which hides it
            _load_tile(desc, bufs, ready, empty, rows, t0 + tl, head, head_len, LR, BLOCK_N, STAGES)
        return t0 + tiles

    @gluon.jit
    def _item(item, n_m, num_heads, group, num_qb, BLOCK_Q: gl.constexpr):
        """Work item -> (b, h, bh, kv head, first query row, schedule row); items run query tiles fastest."""
        pid_m = item % n_m
        bh = item // n_m
        b = bh // num_heads
        h = bh % num_heads
        kvh = b * (num_heads // group) + h // group  # KV head: its rows in the [B*Hkv*L_p, D] views
        q_start = pid_m * 128  # BLOCK_M
        row = bh.to(gl.int64) * num_qb + q_start // BLOCK_Q
        return b, h, bh, kvh, q_start, row

    @gluon.jit
    def _counts(Count, item, n_items, n_m, num_heads, group, num_qb, BLOCK_Q: gl.constexpr):
        """The schedule's 8 counts of ``item`` (entries per level, then clean entries per level); an item past
        the end reads the last item's (the consumer prefetches the next item's counts before its epilogue)."""
        row = _item(gl.minimum(item, n_items - 1), n_m, num_heads, group, num_qb, BLOCK_Q)[5]
        cnt = Count + row * 8
        return (gl.load(cnt + 0), gl.load(cnt + 1), gl.load(cnt + 2), gl.load(cnt + 3),
                gl.load(cnt + 4), gl.load(cnt + 5), gl.load(cnt + 6), gl.load(cnt + 7))

    @gluon.jit
    def _tiles(n, R: gl.constexpr, BLOCK_N: gl.constexpr):
        return (n * R + BLOCK_N - 1) // BLOCK_N

    @gluon.jit
    def _tails(n0, n1, n2, n3, k0, k1, k2, k3, BLOCK_KV: gl.constexpr, BLOCK_N: gl.constexpr):
        """One int32, a byte per level rank: the valid columns of the level's last tile, or 255 when the
        level holds the ragged last KV block. A masked tile of a level without it is that level's partly
        filled last tile: it needs only its unfilled tail cut (:func:`_cut_tail`), not :func:`_masked`."""
        return (_tail(n0, k0, BLOCK_KV, BLOCK_N) | (_tail(n1, k1, BLOCK_KV // 2, BLOCK_N) << 8)
                | (_tail(n2, k2, BLOCK_KV // 4, BLOCK_N) << 16) | (_tail(n3, k3, BLOCK_KV // 8, BLOCK_N) << 24))

    @gluon.jit
    def _tail(n, k, R: gl.constexpr, BLOCK_N: gl.constexpr):
        return gl.where(k < n, 255, n * R - (_tiles(n, R, BLOCK_N) - 1) * BLOCK_N)

    @gluon.jit
    def _valid_cols(t, lvl, e1, e2, e4, e8, tails, BLOCK_N: gl.constexpr):
        """Valid columns of item tile t (level rank lvl): all for a clean tile, else its level's byte of
        :func:`_tails` (255: a tile of the ragged last KV block, for :func:`_masked`)."""
        return gl.where(t >= _pick(lvl, e1, e2, e4, e8), (tails >> (lvl * 8)) & 0xFF, BLOCK_N)

    @gluon.jit
    def _cut_tail(s, valid, BLOCK_N: gl.constexpr, s_layout: gl.constexpr):
        """-inf past the tile's first ``valid`` columns; whole tiles (valid == BLOCK_N) keep theirs. ptxas
        predicates it, so every clean tile of a step copy holding it pays the select (~60 instructions per
        tile at 64 rows); level-1-only plans keep it in a copy of its own (``COLD_CUT`` in :func:`_consumer`)."""
        if valid < BLOCK_N:
            cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            s = gl.where(gl.expand_dims(cols < valid, 0), s, float("-inf"))
        return s

    @gluon.jit
    def _loader(x1, x2, x4, x8, bufs, ready, empty, Idx, Count,
                first, step, n_items, n_m, num_heads, group, num_qb, width, kv_len, len2, len4, len8,
                BLOCK_Q: gl.constexpr, BLOCK_KV: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, LEVEL_MASK: gl.constexpr):
        """1 warp, one operand (K or V: each has its own loader, which doubles the copy-issue rate that
        pooled tiles of many small entries need): for each work item, walks levels 1, 2, 4, 8 in the
        schedule's order; one tile counter over all items drives the ring, so the next item's tiles
        load while the consumers finish this one."""
        t = 0
        for item in range(first, n_items, step):
            b, h, bh, kvh, q_start, row = _item(item, n_m, num_heads, group, num_qb, BLOCK_Q)
            idx_row = Idx + row * width
            cnt = Count + row * 8
            n1 = gl.load(cnt + 0)
            n2 = gl.load(cnt + 1)
            n4 = gl.load(cnt + 2)
            n8 = gl.load(cnt + 3)
            if LEVEL_MASK & 1:
                t = _load_level(x1, bufs, ready, empty, idx_row, n1, t, kvh, kv_len, BLOCK_KV, BLOCK_N, STAGES)
            if LEVEL_MASK & 2:
                t = _load_level(x2, bufs, ready, empty, idx_row + n1, n2, t, kvh, len2, BLOCK_KV // 2, BLOCK_N, STAGES)
            if LEVEL_MASK & 4:
                t = _load_level(x4, bufs, ready, empty, idx_row + n1 + n2, n4, t, kvh, len4, BLOCK_KV // 4, BLOCK_N, STAGES)
            if LEVEL_MASK & 8:
                t = _load_level(x8, bufs, ready, empty, idx_row + n1 + n2 + n4, n8, t, kvh, len8, BLOCK_KV // 8, BLOCK_N, STAGES)

    @gluon.jit
    def _pick(lvl, a0, a1, a2, a3):
        """The per-level scalar of level rank ``lvl`` (0..3)."""
        return gl.where(lvl == 0, a0, gl.where(lvl == 1, a1, gl.where(lvl == 2, a2, a3)))

    @gluon.jit
    def _masked(s, tl, lvl, cnt, kv_len, inv_scale, idx_row,
                BLOCK_N: gl.constexpr, BLOCK_KV: gl.constexpr, s_layout: gl.constexpr):
        """Raw scores of a tile of a level holding the ragged last KV block: + log2(group size)/scale per
        pooled key, -inf past the level's entries (a tile's unfilled tail) or past the sequence end. Level 1
        has size 1: no bias. (Other masked tiles only need their tail cut: :func:`_cut_tail`.)

        The level's entry count and start are re-read from the count row here
        (such tiles are a few per work item at most; keeping the counts live
        would cost consumer registers).
        """
        n0 = gl.load(cnt + 0)
        n1 = gl.load(cnt + 1)
        n2 = gl.load(cnt + 2)
        n_l = _pick(lvl, n0, n1, n2, gl.load(cnt + 3))
        start_l = _pick(lvl, 0, n0, n0 + n1, n0 + n1 + n2)
        r = BLOCK_KV >> lvl  # rows per entry at this level
        c = tl * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        e = c // r
        blk = gl.load(idx_row + start_l + gl.minimum(e, n_l - 1)).to(gl.int32)
        first = ((blk * r + c % r) << lvl)  # first key position of the pooled row
        size = gl.minimum(kv_len - first, 1 << lvl)
        ok = (e < n_l) & (size > 0)
        bias = gl.log2(gl.maximum(size, 1).to(gl.float32)) * inv_scale
        return gl.where(gl.expand_dims(ok, 0), s + gl.expand_dims(bias, 0), float("-inf"))

    @gluon.jit
    def _step(t, lvl, tl, valid, acc, p_op, m_i, l_i, q_a, zero_s, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty,
              cnt, kv_len, qk_scale, inv_scale, idx_row,
              MASKED: gl.constexpr, CUT: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_KV: gl.constexpr, STAGES: gl.constexpr,
              s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr):
        """Tile t >= 1: S_t = Q K_t^T and O += P_{t-1} V_{t-1} issued back to back.

        Clean tiles run the softmax of S_t while the PV wgmma is in flight;
        so do the partly filled last tiles of levels without a ragged entry
        (``valid`` < BLOCK_N: columns past it cut; CUT says whether this copy
        of the step has the cut, see :func:`_consumer`). MASKED tiles (the ragged
        last KV block's) first let the PV wgmma finish: its register operand
        P_{t-1} is then dead, which leaves room for the per-column mask/bias
        vectors of :func:`_masked` without spilling.
        """
        slot = t % STAGES
        prev = (t - 1) % STAGES
        mbarrier.wait(k_ready.index(slot), (t // STAGES) & 1)
        s_tok = warpgroup_mma(q_a, k_bufs.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), ((t - 1) // STAGES) & 1)
        o_tok = warpgroup_mma(p_op, v_bufs.index(prev), acc, is_async=True)
        if MASKED:
            s, acc = warpgroup_mma_wait(0, deps=[s_tok, o_tok])
            mbarrier.arrive(k_empty.index(slot), count=1)
            mbarrier.arrive(v_empty.index(prev), count=1)
            s = _masked(s, tl, lvl, cnt, kv_len, inv_scale, idx_row, BLOCK_N, BLOCK_KV, s_layout)
            m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
            p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
        else:
            s = warpgroup_mma_wait(1, deps=[s_tok])  # S done; PV may still run
            mbarrier.arrive(k_empty.index(slot), count=1)
            if CUT:
                s = _cut_tail(s, valid, BLOCK_N, s_layout)
            shift = lvl.to(gl.float32)  # + log2(p) of a clean pooled tile, folded into max and shift
            m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale + shift)
            p = gl.exp2(s * qk_scale + gl.expand_dims(shift - m_new, 1))
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, 1)
        if not MASKED:
            acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])
            mbarrier.arrive(v_empty.index(prev), count=1)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        p_op = gl.convert_layout(p.to(p_op.dtype), p_layout)
        return acc, p_op, m_new, l_i

    @gluon.jit
    def _load_q(Q, item, n_items, n_m, num_heads, q_len, sq_b, sq_h, sq_l,
                WG: gl.constexpr, SUB_M: gl.constexpr, D: gl.constexpr, q_layout: gl.constexpr):
        """This warpgroup's 64 query rows of ``item`` into registers (pointer loads: any strides); zeros past the end."""
        pid_m = item % n_m
        bh = item // n_m
        r0 = pid_m * (2 * SUB_M) + WG * SUB_M
        q_rows = r0 + gl.arange(0, SUB_M, layout=gl.SliceLayout(1, q_layout))
        q_cols = gl.arange(0, D, layout=gl.SliceLayout(0, q_layout))
        q_ptr = Q + (bh // num_heads).to(gl.int64) * sq_b + (bh % num_heads).to(gl.int64) * sq_h
        ok = (q_rows < q_len) & (item < n_items)
        return gl.load(q_ptr + gl.expand_dims(q_rows, 1) * sq_l + gl.expand_dims(q_cols, 0), mask=gl.expand_dims(ok, 1), other=0.0)

    @gluon.jit
    def _tile(t, pos, c1, c2, c3, e1, e2, e4, e8, tails, acc, p_op, m_i, l_i, q_a, zero_s, k_bufs, v_bufs,
              k_ready, k_empty, v_ready, v_empty, cnt, kv_len, qk_scale, inv_scale, idx_row,
              COLD_CUT: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_KV: gl.constexpr, STAGES: gl.constexpr,
              s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr):
        """Item tile t >= 1 (ring position pos) through the :func:`_step` copy its masking needs."""
        lvl = (t >= c1).to(gl.int32) + (t >= c2).to(gl.int32) + (t >= c3).to(gl.int32)
        valid = _valid_cols(t, lvl, e1, e2, e4, e8, tails, BLOCK_N)
        if valid == 255:
            acc, p_op, m_i, l_i = _step(pos, lvl, t - _pick(lvl, 0, c1, c2, c3), valid, acc, p_op, m_i, l_i, q_a, zero_s,
                                        k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, cnt, kv_len, qk_scale, inv_scale,
                                        idx_row, True, False, BLOCK_N, BLOCK_KV, STAGES, s_layout, o_layout, p_layout)
        elif COLD_CUT:
            if valid < BLOCK_N:
                acc, p_op, m_i, l_i = _step(pos, lvl, 0, valid, acc, p_op, m_i, l_i, q_a, zero_s, k_bufs, v_bufs, k_ready, k_empty,
                                            v_ready, v_empty, cnt, kv_len, qk_scale, inv_scale, idx_row, False, True, BLOCK_N,
                                            BLOCK_KV, STAGES, s_layout, o_layout, p_layout)
            else:
                acc, p_op, m_i, l_i = _step(pos, lvl, 0, valid, acc, p_op, m_i, l_i, q_a, zero_s, k_bufs, v_bufs, k_ready, k_empty,
                                            v_ready, v_empty, cnt, kv_len, qk_scale, inv_scale, idx_row, False, False, BLOCK_N,
                                            BLOCK_KV, STAGES, s_layout, o_layout, p_layout)
        else:
            acc, p_op, m_i, l_i = _step(pos, lvl, 0, valid, acc, p_op, m_i, l_i, q_a, zero_s, k_bufs, v_bufs, k_ready, k_empty,
                                        v_ready, v_empty, cnt, kv_len, qk_scale, inv_scale, idx_row, False, True, BLOCK_N,
                                        BLOCK_KV, STAGES, s_layout, o_layout, p_layout)
        return acc, p_op, m_i, l_i

    @gluon.jit
    def _first_scores(q_a, k_bufs, zero_s, k_ready, k_empty, pos, STAGES: gl.constexpr):
        """S = Q K^T of an item's tile 0 (ring position pos), waited for: there is no previous P to multiply yet."""
        slot = pos % STAGES
        mbarrier.wait(k_ready.index(slot), (pos // STAGES) & 1)
        tok = warpgroup_mma(q_a, k_bufs.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=[tok])
        mbarrier.arrive(k_empty.index(slot), count=1)
        return s

    @gluon.jit
    def _last_pv(p_op, acc, v_bufs, v_ready, v_empty, pos, STAGES: gl.constexpr):
        """O += P V of an item's last tile (ring position pos), waited for."""
        slot = pos % STAGES
        mbarrier.wait(v_ready.index(slot), (pos // STAGES) & 1)
        o_tok = warpgroup_mma(p_op, v_bufs.index(slot), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])
        mbarrier.arrive(v_empty.index(slot), count=1)
        return acc

    @gluon.jit
    def _consumer(Q, o_desc, Lse, RowScale, Comp, Idx, Count, q_smem, o_smem, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty,
                  first, step, n_items, n_m, num_heads, group, num_qb, width, q_len, kv_len, qk_scale, sq_b, sq_h, sq_l,
                  WG: gl.constexpr, SUB_M: gl.constexpr, BLOCK_Q: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_KV: gl.constexpr,
                  D: gl.constexpr, STAGES: gl.constexpr, HAS_SCALE: gl.constexpr, HAS_COMP: gl.constexpr, RETURN_LSE: gl.constexpr,
                  Q_REGS: gl.constexpr, LEVEL_MASK: gl.constexpr):
        """One warpgroup: softmax(Q K^T) V for its 64 query rows of each work item, over every tile of every level.

        Tiles are numbered across levels (the loader's order); tile t of an
        item is of level rank lvl, local tile tl, and ring position
        ``base + t`` (the ring runs on across items). Clean tiles add
        log2(p) = lvl to the row max and the shift (no per-element cost); so
        do a level's partly filled last tiles after their tail cut; the
        ragged last KV block's tiles go through :func:`_masked`. The next item's Q rows are loaded
        into registers before this item's epilogue, so their latency overlaps
        the output store, and so are its schedule counts. ``k_bufs`` / ``v_bufs``
        are the rings in the layout the loaders fill (NVMMA, or interleaved).
        """
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        q_op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
        q_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[4, 8], warps_per_cta=[4, 1], order=[1, 0])
        dtype: gl.constexpr = q_smem.dtype
        # Level-1-only plans: a level's partly filled last tile (at most one per item) takes its own copy of the
        # clean step, so whole tiles skip the cut's select; with pooled levels one copy with the cut measured faster
        COLD_CUT: gl.constexpr = LEVEL_MASK == 1
        inv_scale = 1.0 / qk_scale
        base = 0
        qv = _load_q(Q, first, n_items, n_m, num_heads, q_len, sq_b, sq_h, sq_l, WG, SUB_M, D, q_layout)
        n0, n1, n2, n3, k0, k1, k2, k3 = _counts(Count, first, n_items, n_m, num_heads, group, num_qb, BLOCK_Q)
        for item in range(first, n_items, step):
            b, h, bh, kvh, q_start, row = _item(item, n_m, num_heads, group, num_qb, BLOCK_Q)
            idx_row = Idx + row * width
            cnt = Count + row * 8
            if Q_REGS:  # S = Q K^T takes Q from registers: its wgmma then reads only K from shared memory
                q_a = gl.convert_layout(qv, q_op_layout)
            else:
                q_smem.store(qv)
                fence_async_shared()
                q_a = q_smem
            # Tile ranges of the levels: [0, c1) level 1, [c1, c2) level 2, [c2, c3) level 4, [c3, total) level 8;
            # tile t of level rank lvl is clean while t < e[lvl] (whole, unmasked entries only).
            c1 = _tiles(n0, BLOCK_KV, BLOCK_N)
            c2 = c1 + _tiles(n1, BLOCK_KV // 2, BLOCK_N)
            c3 = c2 + _tiles(n2, BLOCK_KV // 4, BLOCK_N)
            total = c3 + _tiles(n3, BLOCK_KV // 8, BLOCK_N)
            e1 = (k0 * BLOCK_KV) // BLOCK_N
            e2 = c1 + (k1 * (BLOCK_KV // 2)) // BLOCK_N
            e4 = c2 + (k2 * (BLOCK_KV // 4)) // BLOCK_N
            e8 = c3 + (k3 * (BLOCK_KV // 8)) // BLOCK_N
            tails = _tails(n0, n1, n2, n3, k0, k1, k2, k3, BLOCK_KV, BLOCK_N)

            zero_s = gl.zeros([SUB_M, BLOCK_N], gl.float32, s_layout)
            m_i = gl.full([SUB_M], -1.0e30, gl.float32, gl.SliceLayout(1, s_layout))  # finite: an all-masked tile gives p = 0
            l_i = gl.zeros([SUB_M], gl.float32, gl.SliceLayout(1, s_layout))
            acc = gl.zeros([SUB_M, D], gl.float32, o_layout)
            if total > 0:
                s = _first_scores(q_a, k_bufs, zero_s, k_ready, k_empty, base, STAGES)  # tile 0: S only
                lvl = (c1 == 0).to(gl.int32) + (c2 == 0).to(gl.int32) + (c3 == 0).to(gl.int32)
                shift = lvl.to(gl.float32)
                valid = _valid_cols(0, lvl, e1, e2, e4, e8, tails, BLOCK_N)
                if valid == 255:
                    s = _masked(s, 0, lvl, cnt, kv_len, inv_scale, idx_row, BLOCK_N, BLOCK_KV, s_layout)
                    shift = 0.0
                else:
                    s = _cut_tail(s, valid, BLOCK_N, s_layout)
                m_i = gl.maximum(m_i, gl.max(s, 1) * qk_scale + shift)
                p = gl.exp2(s * qk_scale + gl.expand_dims(shift - m_i, 1))
                l_i = gl.sum(p, 1)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                for t in range(1, total):
                    acc, p_op, m_i, l_i = _tile(t, base + t, c1, c2, c3, e1, e2, e4, e8, tails, acc, p_op, m_i, l_i, q_a, zero_s,
                                                k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, cnt, kv_len, qk_scale,
                                                inv_scale, idx_row, COLD_CUT, BLOCK_N, BLOCK_KV, STAGES, s_layout, o_layout, p_layout)
                acc = _last_pv(p_op, acc, v_bufs, v_ready, v_empty, base + total - 1, STAGES)
            base += total
            # the next item's Q and counts (their loads overlap this epilogue; q_smem is free: every wgmma has completed)
            qv = _load_q(Q, item + step, n_items, n_m, num_heads, q_len, sq_b, sq_h, sq_l, WG, SUB_M, D, q_layout)
            n0, n1, n2, n3, k0, k1, k2, k3 = _counts(Count, item + step, n_items, n_m, num_heads, group, num_qb, BLOCK_Q)

            out, lse2 = _normalised(acc, l_i, m_i, o_layout)
            _store_out(out, lse2, o_desc, o_smem, Lse, RowScale, Comp, b, h, bh, q_start, row, q_len,
                       WG, SUB_M, D, HAS_SCALE, HAS_COMP, RETURN_LSE, o_layout)
        tma.store_wait(0)  # the last O store has read o_smem before the program ends

    @gluon.jit
    def _normalised(acc, l_i, m_i, o_layout: gl.constexpr):
        """The rows' outputs (acc / softmax sum; zeros for rows that saw nothing) and log2-sum-exp (-inf for them)."""
        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        seen = l_o > 0.0
        l_safe = gl.where(seen, l_o, 1.0)
        m_o = gl.convert_layout(m_i, gl.SliceLayout(1, o_layout))
        # one reciprocal per row, then multiplies: a division per element is an MUFU op each, as many as a tile's exp2
        return acc * gl.expand_dims(1.0 / l_safe, 1), gl.where(seen, m_o + gl.log2(l_safe), float("-inf"))

    @gluon.jit
    def _store_out(out, lse2, o_desc, o_smem, Lse, RowScale, Comp, b, h, bh, q_start, row, q_len,
                   WG: gl.constexpr, SUB_M: gl.constexpr, D: gl.constexpr, HAS_SCALE: gl.constexpr, HAS_COMP: gl.constexpr,
                   RETURN_LSE: gl.constexpr, o_layout: gl.constexpr):
        """Epilogue: row_scale / compensation; the rows to shared memory and out by one TMA store (rows past
        q_len are clipped by the descriptor), which the next item does not wait for; the natural-log LSE if asked.

        Why TMA: a store from the wgmma accumulator layout writes a few bytes per thread and instruction, with
        64-bit addresses per element; a clock64 trace (H200, session 18) put that epilogue at ~5k cycles per
        work item, as much as two 128-row tiles."""
        if HAS_SCALE:
            out = out * gl.load(RowScale + row)
        if HAS_COMP:
            o_cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
            out = out + gl.expand_dims(gl.load(Comp + row * D + o_cols), 0)
        tma.store_wait(0)  # the previous item's store has read o_smem (issued an item ago)
        o_smem.store(out.to(o_smem.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [b, h, q_start + WG * SUB_M, 0],
                                        o_smem._reinterpret(o_smem.dtype, [1, 1, SUB_M, D], o_desc.layout))
        if RETURN_LSE:
            o_rows = q_start + WG * SUB_M + gl.arange(0, SUB_M, layout=gl.SliceLayout(1, o_layout))
            gl.store(Lse + bh.to(gl.int64) * q_len + o_rows, lse2 * 0.6931471805599453, mask=o_rows < q_len)

    @gluon.jit(do_not_specialize=["q_len", "kv_len", "len2", "len4", "len8", "num_heads", "group", "num_qb", "width", "n_bh"])
    def _gluon_fwd(
        Q, k1, v1, k2, v2, k4, v4, k8, v8, o_desc, Lse, RowScale, Comp, Idx, Count,
        qk_scale, q_len, kv_len, len2, len4, len8, num_heads, group, num_qb, width, n_bh,
        sq_b, sq_h, sq_l,
        BLOCK_Q: gl.constexpr, BLOCK_KV: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr,
        STAGES: gl.constexpr, LEVEL_MASK: gl.constexpr, HAS_SCALE: gl.constexpr, HAS_COMP: gl.constexpr, RETURN_LSE: gl.constexpr,
        CONSUMER_REGS: gl.constexpr, LOADER_REGS: gl.constexpr, Q_REGS: gl.constexpr, ILV: gl.constexpr,
    ):
        """Work items are (128 query rows, batch*head), query tiles fastest; program i takes items i,
        i + grid, ... (a grid of one program per item, or a persistent grid of one per SM).

        ILV (head dim 128): the rings hold interleaved tiles (:func:`_interleaved_bases`) and the eight
        descriptors are rank 5 (:func:`_load_tile`): one TMA box per load instead of one per 64-column half,
        which halves the copies of every level (a 128-row level-8 tile at block_kv 64: 16 instead of 32).
        The loaders write the rings through an entry view, the consumers read them through the linear layout."""
        SUB_M: gl.constexpr = 64
        first = gl.program_id(0)
        step = gl.num_programs(0)
        n_m = (q_len + 2 * SUB_M - 1) // (2 * SUB_M)
        n_items = n_m * n_bh

        dtype: gl.constexpr = k1.dtype
        q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([SUB_M, D], dtype)
        q0 = gl.allocate_shared_memory(dtype, [SUB_M, D], q_layout)
        q1 = gl.allocate_shared_memory(dtype, [SUB_M, D], q_layout)
        o0 = gl.allocate_shared_memory(dtype, [SUB_M, D], box_layout(dtype, 2))  # each consumer's O on its way out
        o1 = gl.allocate_shared_memory(dtype, [SUB_M, D], box_layout(dtype, 2))
        if ILV:  # the rings are only ever used through views (_load_tile, k_read / v_read below)
            ring_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], dtype)
        else:
            ring_layout: gl.constexpr = k1.layout
        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], ring_layout)
        v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], ring_layout)
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=2)  # one arrive per consumer warpgroup
            mbarrier.init(v_empty.index(i), count=2)
        fence_async_shared()
        if ILV:
            k_read = k_bufs._reinterpret(dtype, [STAGES, BLOCK_N, D], interleaved_layout(BLOCK_N, D))
            v_read = v_bufs._reinterpret(dtype, [STAGES, BLOCK_N, D], interleaved_layout(BLOCK_N, D))
        else:
            k_read = k_bufs
            v_read = v_bufs

        # (Argument tuples spelled out: tuple concatenation drops constexpr-ness in triton 3.6.)
        gl.warp_specialize([
            (_consumer, (Q, o_desc, Lse, RowScale, Comp, Idx, Count, q0, o0, k_read, v_read, k_ready, k_empty, v_ready, v_empty,
                         first, step, n_items, n_m, num_heads, group, num_qb, width, q_len, kv_len, qk_scale, sq_b, sq_h, sq_l,
                         0, SUB_M, BLOCK_Q, BLOCK_N, BLOCK_KV, D, STAGES, HAS_SCALE, HAS_COMP, RETURN_LSE, Q_REGS, LEVEL_MASK)),
            (_consumer, (Q, o_desc, Lse, RowScale, Comp, Idx, Count, q1, o1, k_read, v_read, k_ready, k_empty, v_ready, v_empty,
                         first, step, n_items, n_m, num_heads, group, num_qb, width, q_len, kv_len, qk_scale, sq_b, sq_h, sq_l,
                         1, SUB_M, BLOCK_Q, BLOCK_N, BLOCK_KV, D, STAGES, HAS_SCALE, HAS_COMP, RETURN_LSE, Q_REGS, LEVEL_MASK)),
            (_loader, (k1, k2, k4, k8, k_bufs, k_ready, k_empty, Idx, Count,
                       first, step, n_items, n_m, num_heads, group, num_qb, width, kv_len, len2, len4, len8,
                       BLOCK_Q, BLOCK_KV, BLOCK_N, STAGES, LEVEL_MASK)),
            (_loader, (v1, v2, v4, v8, v_bufs, v_ready, v_empty, Idx, Count,
                       first, step, n_items, n_m, num_heads, group, num_qb, width, kv_len, len2, len4, len8,
                       BLOCK_Q, BLOCK_KV, BLOCK_N, STAGES, LEVEL_MASK)),
        ], [4, 1, 1], [CONSUMER_REGS, LOADER_REGS, LOADER_REGS])


def load_rows(block_kv: int, block_n: int, level: int) -> int:
    """Rows of one TMA load at ``level``: an entry's rows, at most a tile."""
    return min(block_kv // level, block_n)


def compile_sm90(dtype: str = "bf16", d: int = 128, block_q: int = 128, block_kv: int = 64, block_n: int = 128,
                 stages: int = 2, level_mask: int = 1, has_scale: bool = False, has_comp: bool = False,
                 return_lse: bool = False, index_dtype: str = "i16", q_regs: bool = False, ilv: bool = False):
    """Compile the kernel for sm_90 without a GPU; returns triton's CompiledKernel (asm, metadata)."""
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.experimental.gluon._runtime import GluonASTSource  # noqa: PLC0415

    elem = gl.bfloat16 if dtype == "bf16" else gl.float16
    ptr = f"*{dtype}"
    sig = {"Q": ptr}
    for p in (1, 2, 4, 8):
        rows = load_rows(block_kv, block_n, p)
        if ilv:
            desc = f"tensordesc<{dtype}[1,{rows // 8},{d // 64},8,64],{box_layout(elem, 5)!r}>"
        else:
            desc = f"tensordesc<{dtype}[{rows},{d}],{gl.NVMMASharedLayout.get_default_for([rows, d], elem)!r}>"
        sig[f"k{p}"] = sig[f"v{p}"] = desc
    sig.update({
        "o_desc": f"tensordesc<{dtype}[1,1,64,{d}],{box_layout(elem, 4)!r}>", "Lse": "*fp32", "RowScale": "*fp32", "Comp": "*fp32",
        "Idx": f"*{index_dtype}", "Count": "*i32",
        "qk_scale": "fp32", "q_len": "i32", "kv_len": "i32", "len2": "i32", "len4": "i32", "len8": "i32",
        "num_heads": "i32", "group": "i32", "num_qb": "i32", "width": "i32", "n_bh": "i32",
        "sq_b": "i64", "sq_h": "i64", "sq_l": "i32",
    })
    consts = dict(BLOCK_Q=block_q, BLOCK_KV=block_kv, BLOCK_N=block_n, D=d, STAGES=stages, LEVEL_MASK=level_mask,
                  HAS_SCALE=has_scale, HAS_COMP=has_comp, RETURN_LSE=return_lse,
                  CONSUMER_REGS=CONSUMER_REGS, LOADER_REGS=LOADER_REGS, Q_REGS=q_regs, ILV=ilv)
    for name in consts:
        sig[name] = "constexpr"
    src = GluonASTSource(_gluon_fwd, sig, consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": MAXNREG})
