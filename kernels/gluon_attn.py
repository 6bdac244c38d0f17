"""EXPERIMENTAL Gluon (Hopper, sm_90) kernel of the level-1 fast path; host code in
:mod:`spbench.kernels.pyramid_gluon` (its docstring explains the design).

This module imports only triton (no torch, no spbench), so the kernel can be
compiled for sm_90 on a machine without a GPU: :func:`compile_sm90`.
"""

from __future__ import annotations

try:  # Gluon is experimental: its absence (or an older API) only disables this path.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    HAVE_GLUON = all(hasattr(gl, name) for name in ("warp_specialize", "NVMMADistributedLayout", "allocate_shared_memory")) and hasattr(
        tma, "async_copy_global_to_shared"
    )
except Exception:  # noqa: BLE001 - any import problem means "no Gluon"
    HAVE_GLUON = False

#: query rows per program (two consumer warpgroups of 64 rows)
BLOCK_M = 128
SUB_M = 64
#: per-partition register budgets (setmaxnreg): consumers, loader
CONSUMER_REGS = 240
LOADER_REGS = 24
MAXNREG = 168  # 12 warps x 32 threads x 168 <= 64K registers


if HAVE_GLUON:

    @gluon.jit
    def _load_tile(desc, bufs, ready, empty, idx_row, n, t, kv_row0, phase,
                   BLOCK_N: gl.constexpr, LOAD_ROWS: gl.constexpr, BLOCK_KV: gl.constexpr, STAGES: gl.constexpr):
        """TMA-load K or V rows of tile t into ring slot t % STAGES once both consumers freed it."""
        slot = t % STAGES
        mbarrier.wait(empty.index(slot), phase ^ 1)
        mbarrier.expect(ready.index(slot), desc.block_type.nbytes * (BLOCK_N // LOAD_ROWS))
        for j in gl.static_range(BLOCK_N // LOAD_ROWS):
            g = t * BLOCK_N + j * LOAD_ROWS
            # Past the last entry (odd tail of a pair): reload the last block; the consumer masks it.
            e = gl.minimum(g // BLOCK_KV, n - 1)
            blk = gl.load(idx_row + e).to(gl.int32)
            row = kv_row0 + blk * BLOCK_KV + g % BLOCK_KV
            tma.async_copy_global_to_shared(desc, [row, 0], ready.index(slot), bufs.index(slot).slice(j * LOAD_ROWS, LOAD_ROWS))

    @gluon.jit
    def _loader(k_desc, v_desc, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, idx_row, n, n_tiles, kv_row0,
                BLOCK_N: gl.constexpr, LOAD_ROWS: gl.constexpr, BLOCK_KV: gl.constexpr, STAGES: gl.constexpr):
        for t in range(n_tiles):
            phase = (t // STAGES) & 1
            _load_tile(k_desc, k_bufs, k_ready, k_empty, idx_row, n, t, kv_row0, phase, BLOCK_N, LOAD_ROWS, BLOCK_KV, STAGES)
            _load_tile(v_desc, v_bufs, v_ready, v_empty, idx_row, n, t, kv_row0, phase, BLOCK_N, LOAD_ROWS, BLOCK_KV, STAGES)

    @gluon.jit
    def _masked(s, t, n, kv_len, idx_row, BLOCK_N: gl.constexpr, BLOCK_KV: gl.constexpr, s_layout: gl.constexpr):
        """-inf where a column is past the row's entries or past the sequence end."""
        c = t * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        e = c // BLOCK_KV
        blk = gl.load(idx_row + gl.minimum(e, n - 1)).to(gl.int32)
        ok = (e < n) & (blk * BLOCK_KV + c % BLOCK_KV < kv_len)
        return gl.where(gl.expand_dims(ok, 0), s, float("-inf"))

    @gluon.jit
    def _consumer(Q, Out, Lse, RowScale, Comp, idx_row, q_smem, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty,
                  n, n_tiles, n_full, row, b, h, bh, q_start, q_len, kv_len, qk_scale,
                  sq_b, sq_h, sq_l, so_b, so_h, so_l,
                  WG: gl.constexpr, SUB_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_KV: gl.constexpr, D: gl.constexpr,
                  STAGES: gl.constexpr, HAS_SCALE: gl.constexpr, HAS_COMP: gl.constexpr, RETURN_LSE: gl.constexpr):
        """One warpgroup: softmax(Q K^T) V for its 64 query rows over every tile of the row."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        q_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[4, 8], warps_per_cta=[4, 1], order=[1, 0])
        dtype: gl.constexpr = q_smem.dtype

        # Q rows of this warpgroup -> shared memory (pointer loads: any strides).
        r0 = q_start + WG * SUB_M
        q_rows = r0 + gl.arange(0, SUB_M, layout=gl.SliceLayout(1, q_layout))
        q_cols = gl.arange(0, D, layout=gl.SliceLayout(0, q_layout))
        q_ptr = Q + b.to(gl.int64) * sq_b + h.to(gl.int64) * sq_h
        qv = gl.load(q_ptr + gl.expand_dims(q_rows, 1) * sq_l + gl.expand_dims(q_cols, 0), mask=gl.expand_dims(q_rows < q_len, 1), other=0.0)
        q_smem.store(qv)
        fence_async_shared()

        zero_s = gl.zeros([SUB_M, BLOCK_N], gl.float32, s_layout)
        m_i = gl.full([SUB_M], -1.0e30, gl.float32, gl.SliceLayout(1, s_layout))  # finite: an all-masked tile gives p = 0
        l_i = gl.zeros([SUB_M], gl.float32, gl.SliceLayout(1, s_layout))
        acc = gl.zeros([SUB_M, D], gl.float32, o_layout)
        if n_tiles > 0:
            # Tile 0: S only (there is no previous P to multiply yet).
            mbarrier.wait(k_ready.index(0), 0)
            tok = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=[tok])
            mbarrier.arrive(k_empty.index(0), count=1)
            if n_full == 0:
                s = _masked(s, 0, n, kv_len, idx_row, BLOCK_N, BLOCK_KV, s_layout)
            m_i = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
            p = gl.exp2(s * qk_scale - gl.expand_dims(m_i, 1))
            l_i = gl.sum(p, 1)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            for t in range(1, n_tiles):
                slot = t % STAGES
                prev = (t - 1) % STAGES
                mbarrier.wait(k_ready.index(slot), (t // STAGES) & 1)
                s_tok = warpgroup_mma(q_smem, k_bufs.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                mbarrier.wait(v_ready.index(prev), ((t - 1) // STAGES) & 1)
                o_tok = warpgroup_mma(p_op, v_bufs.index(prev), acc, is_async=True)
                s = warpgroup_mma_wait(1, deps=[s_tok])  # S done; PV may still run
                mbarrier.arrive(k_empty.index(slot), count=1)
                if t >= n_full:
                    s = _masked(s, t, n, kv_len, idx_row, BLOCK_N, BLOCK_KV, s_layout)
                m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
                p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
                alpha = gl.exp2(m_i - m_new)
                l_i = l_i * alpha + gl.sum(p, 1)
                m_i = m_new
                acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])
                mbarrier.arrive(v_empty.index(prev), count=1)
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
            last = (n_tiles - 1) % STAGES
            mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
            o_tok = warpgroup_mma(p_op, v_bufs.index(last), acc, is_async=True)
            acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])
            mbarrier.arrive(v_empty.index(last), count=1)

        # Epilogue: normalise, row_scale / compensation, store; rows that saw nothing give zeros.
        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        seen = l_o > 0.0
        out = acc / gl.expand_dims(gl.where(seen, l_o, 1.0), 1)
        o_cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        if HAS_SCALE:
            out = out * gl.load(RowScale + row)
        if HAS_COMP:
            out = out + gl.expand_dims(gl.load(Comp + row * D + o_cols), 0)
        o_rows = r0 + gl.arange(0, SUB_M, layout=gl.SliceLayout(1, o_layout))
        o_ptr = Out + b.to(gl.int64) * so_b + h.to(gl.int64) * so_h
        gl.store(o_ptr + gl.expand_dims(o_rows, 1) * so_l + gl.expand_dims(o_cols, 0), out.to(dtype), mask=gl.expand_dims(o_rows < q_len, 1))
        if RETURN_LSE:
            m_o = gl.convert_layout(m_i, gl.SliceLayout(1, o_layout))
            lse = gl.where(seen, (m_o + gl.log2(gl.where(seen, l_o, 1.0))) * 0.6931471805599453, float("-inf"))
            gl.store(Lse + bh.to(gl.int64) * q_len + o_rows, lse, mask=o_rows < q_len)

    @gluon.jit(do_not_specialize=["q_len", "kv_len", "num_heads", "group", "num_qb", "width"])
    def _gluon_fwd(
        Q, k_desc, v_desc, Out, Lse, RowScale, Comp, Idx, Count,
        qk_scale, q_len, kv_len, num_heads, group, num_qb, width,
        sq_b, sq_h, sq_l, so_b, so_h, so_l,
        BLOCK_Q: gl.constexpr, BLOCK_KV: gl.constexpr, BLOCK_N: gl.constexpr, LOAD_ROWS: gl.constexpr, D: gl.constexpr,
        STAGES: gl.constexpr, HAS_SCALE: gl.constexpr, HAS_COMP: gl.constexpr, RETURN_LSE: gl.constexpr,
        CONSUMER_REGS: gl.constexpr, LOADER_REGS: gl.constexpr,
    ):
        SUB_M: gl.constexpr = 64
        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // num_heads
        h = bh % num_heads
        hkv = num_heads // group
        q_start = pid_m * (2 * SUB_M)
        row = bh.to(gl.int64) * num_qb + q_start // BLOCK_Q
        idx_row = Idx + row * width
        n = gl.load(Count + row * 8)
        n_clean = gl.load(Count + row * 8 + 4)
        n_tiles = (n * BLOCK_KV + BLOCK_N - 1) // BLOCK_N
        n_full = (n_clean * BLOCK_KV) // BLOCK_N
        kv_row0 = (b * hkv + h // group) * kv_len  # row of this KV head in the [B*Hkv*Lk, D] view

        dtype: gl.constexpr = k_desc.dtype
        q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([SUB_M, D], dtype)
        q0 = gl.allocate_shared_memory(dtype, [SUB_M, D], q_layout)
        q1 = gl.allocate_shared_memory(dtype, [SUB_M, D], q_layout)
        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], k_desc.layout)
        v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], v_desc.layout)
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

        # (Argument tuples spelled out: tuple concatenation drops constexpr-ness in triton 3.6.)
        gl.warp_specialize([
            (_consumer, (Q, Out, Lse, RowScale, Comp, idx_row, q0, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty,
                         n, n_tiles, n_full, row, b, h, bh, q_start, q_len, kv_len, qk_scale, sq_b, sq_h, sq_l, so_b, so_h, so_l,
                         0, SUB_M, BLOCK_N, BLOCK_KV, D, STAGES, HAS_SCALE, HAS_COMP, RETURN_LSE)),
            (_consumer, (Q, Out, Lse, RowScale, Comp, idx_row, q1, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty,
                         n, n_tiles, n_full, row, b, h, bh, q_start, q_len, kv_len, qk_scale, sq_b, sq_h, sq_l, so_b, so_h, so_l,
                         1, SUB_M, BLOCK_N, BLOCK_KV, D, STAGES, HAS_SCALE, HAS_COMP, RETURN_LSE)),
            (_loader, (k_desc, v_desc, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, idx_row, n, n_tiles, kv_row0,
                       BLOCK_N, LOAD_ROWS, BLOCK_KV, STAGES)),
        ], [4, 1], [CONSUMER_REGS, LOADER_REGS])


def compile_sm90(dtype: str = "bf16", d: int = 128, block_q: int = 128, block_kv: int = 64, block_n: int = 128,
                 stages: int = 2, has_scale: bool = False, has_comp: bool = False, return_lse: bool = False,
                 index_dtype: str = "i16"):
    """Compile the kernel for sm_90 without a GPU; returns triton's CompiledKernel (asm, metadata)."""
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.experimental.gluon._runtime import GluonASTSource  # noqa: PLC0415

    load_rows = min(block_n, block_kv)
    layout = gl.NVMMASharedLayout.get_default_for([load_rows, d], gl.bfloat16 if dtype == "bf16" else gl.float16)
    desc = f"tensordesc<{dtype}[{load_rows},{d}],{layout!r}>"
    ptr = f"*{dtype}"
    sig = {
        "Q": ptr, "k_desc": desc, "v_desc": desc, "Out": ptr, "Lse": "*fp32", "RowScale": "*fp32", "Comp": "*fp32",
        "Idx": f"*{index_dtype}", "Count": "*i32",
        "qk_scale": "fp32", "q_len": "i32", "kv_len": "i32", "num_heads": "i32", "group": "i32", "num_qb": "i32", "width": "i32",
        "sq_b": "i64", "sq_h": "i64", "sq_l": "i32", "so_b": "i64", "so_h": "i64", "so_l": "i32",
    }
    consts = dict(BLOCK_Q=block_q, BLOCK_KV=block_kv, BLOCK_N=block_n, LOAD_ROWS=load_rows, D=d, STAGES=stages,
                  HAS_SCALE=has_scale, HAS_COMP=has_comp, RETURN_LSE=return_lse,
                  CONSUMER_REGS=CONSUMER_REGS, LOADER_REGS=LOADER_REGS)
    for name in consts:
        sig[name] = "constexpr"
    src = GluonASTSource(_gluon_fwd, sig, consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": MAXNREG})
