"""Key importance from an observation window of queries (Token Sparse Attention).

For a window of W query positions ``pos`` (shared by all heads) and each KV
head g with query heads h in its group (GQA, G = Hq / Hkv):

    score[b, g, key] = 1/(G*W) * sum_{h in group g} sum_{w < W} P[b, h, w, key]

where ``P[b, h, w, :]`` is the exact softmax of ``scale * q[b, h, pos[w]] . k[b, g, :]``
over every key the query may see (causal: keys <= pos[w]). Averaging over the
query heads of a group inside the kernel means each K tile is loaded once per
KV head, and the output is already per KV head, which is what the selection
needs (tokens are gathered once per KV head).

Two Triton passes, never an L x L (or W x L) matrix in memory:

1. ``row stats``: online max / sum-exp of each window row over the keys, split
   over key chunks (flash-decoding style) so that 128 rows x 110k keys still
   fill the GPU; the chunks are merged with a small torch logsumexp.
2. ``key scores``: per key tile, recompute the logits of all G*W rows and sum
   their probabilities ``exp(s - lse)``.

:func:`window_key_scores_reference` is the plain-PyTorch reference.
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional on machines without it (the torch path still works).
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None

LOG2E = 1.4426950408889634


def window_positions(length: int, window: int, causal: bool, device=None) -> torch.Tensor:
    """Observation window: the last W positions (causal) or W evenly spaced ones.

    Evenly spaced = ``round(linspace(0, L-1, W))``, which includes the first and
    last token and has no duplicates when W <= L. W is capped at L.
    """
    window = min(window, length)
    if causal:
        return torch.arange(length - window, length, device=device)
    if window == 1:
        return torch.tensor([length - 1], device=device)
    return torch.round(torch.linspace(0, length - 1, window, dtype=torch.float64, device=device)).long()


def window_key_scores_reference(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, causal: bool, scale: float | None = None) -> torch.Tensor:
    """Plain-PyTorch reference: fp32 ``[B, Hkv, Lk]`` (materialises the W x L probabilities)."""
    bsz, hq, _, dim = q.shape
    hkv, length = k.shape[1], k.shape[2]
    group = hq // hkv
    scale = dim**-0.5 if scale is None else scale
    qw = q[:, :, pos].float()  # [B, Hq, W, D]
    kx = k.float().repeat_interleave(group, dim=1)
    s = torch.matmul(qw, kx.transpose(-1, -2)) * scale  # [B, Hq, W, L]
    if causal:
        s = s.masked_fill(torch.arange(length, device=q.device)[None, :] > pos[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1)
    return p.view(bsz, hkv, group * pos.numel(), length).mean(2)


if triton is not None:

    @triton.jit
    def _row_stats_kernel(
        QW, K, POS, M_OUT, L_OUT,
        stride_kb, stride_kh, stride_kl, stride_kd,
        HKV, ROWS, W, L, D, SPLIT_LEN, scale_log2,
        CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    ):
        # QW: contiguous [B, Hq, W, D]; the G*W rows of KV head g are contiguous.
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_s = tl.program_id(2)
        b = pid_bh // HKV
        g = pid_bh % HKV
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < ROWS
        dims = tl.arange(0, BLOCK_D)
        dmask = dims < D
        qpos = tl.load(POS + rows % W, mask=rmask, other=0)
        q_ptrs = QW + (pid_bh.to(tl.int64) * ROWS + rows)[:, None] * D + dims[None, :]
        q = tl.load(q_ptrs, mask=rmask[:, None] & dmask[None, :], other=0.0)
        k_base = K + b.to(tl.int64) * stride_kb + g.to(tl.int64) * stride_kh
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        start = pid_s * SPLIT_LEN
        end = tl.minimum(start + SPLIT_LEN, L)
        for n0 in range(start, end, BLOCK_N):
            keys = n0 + tl.arange(0, BLOCK_N)
            kmask = keys < end
            k = tl.load(k_base + keys.to(tl.int64)[:, None] * stride_kl + dims[None, :] * stride_kd, mask=kmask[:, None] & dmask[None, :], other=0.0)
            if UPCAST:
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * scale_log2
            else:
                s = tl.dot(q, tl.trans(k)) * scale_log2
            visible = kmask[None, :]
            if CAUSAL:
                visible = visible & (keys[None, :] <= qpos[:, None])
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            # Rows that have seen nothing yet keep m = -inf; guard exp2(-inf - -inf).
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), axis=1)
            m_i = m_new
        out = (pid_bh.to(tl.int64) * tl.num_programs(2) + pid_s) * ROWS + rows
        tl.store(M_OUT + out, m_i, mask=rmask)
        tl.store(L_OUT + out, l_i, mask=rmask)

    @triton.jit
    def _key_scores_kernel(
        QW, K, POS, LSE, OUT,
        stride_kb, stride_kh, stride_kl, stride_kd,
        HKV, ROWS, W, L, D, scale_log2, inv_rows,
        CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // HKV
        g = pid_bh % HKV
        dims = tl.arange(0, BLOCK_D)
        dmask = dims < D
        keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        kmask = keys < L
        k_base = K + b.to(tl.int64) * stride_kb + g.to(tl.int64) * stride_kh
        k = tl.load(k_base + keys.to(tl.int64)[:, None] * stride_kl + dims[None, :] * stride_kd, mask=kmask[:, None] & dmask[None, :], other=0.0)
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for m0 in range(0, ROWS, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            rmask = rows < ROWS
            qpos = tl.load(POS + rows % W, mask=rmask, other=0)
            q = tl.load(QW + (pid_bh.to(tl.int64) * ROWS + rows)[:, None] * D + dims[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
            lse = tl.load(LSE + pid_bh.to(tl.int64) * ROWS + rows, mask=rmask, other=float("inf"))
            if UPCAST:
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * scale_log2
            else:
                s = tl.dot(q, tl.trans(k)) * scale_log2
            visible = rmask[:, None] & kmask[None, :]
            if CAUSAL:
                visible = visible & (keys[None, :] <= qpos[:, None])
            p = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
            acc += tl.sum(p, axis=0)
        tl.store(OUT + pid_bh.to(tl.int64) * L + keys, acc * inv_rows, mask=kmask)


def window_key_scores_triton(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, causal: bool, scale: float | None = None, split_len: int | None = None) -> torch.Tensor:
    """Triton version of :func:`window_key_scores_reference`: fp32 ``[B, Hkv, Lk]``."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    bsz, hq, _, dim = q.shape
    hkv, length = k.shape[1], k.shape[2]
    group = hq // hkv
    scale = dim**-0.5 if scale is None else scale
    pos = pos.to(device=q.device, dtype=torch.int32).contiguous()
    window = pos.numel()
    rows = group * window
    # fp32 inputs go through the dot in fp32; 16-bit inputs stay 16-bit (fp32 accumulate).
    qw = q[:, :, pos.long()].to(k.dtype).contiguous()  # [B, Hq, W, D], tiny
    block_m, block_n = 64, 64
    block_d = triton.next_power_of_2(max(dim, 16))
    if split_len is None:
        # Enough key chunks that (B * Hkv * row tiles * chunks) fills a large GPU.
        programs = bsz * hkv * triton.cdiv(rows, block_m)
        chunks = max(1, min(triton.cdiv(length, 1024), triton.cdiv(1024, programs)))
        split_len = triton.cdiv(triton.cdiv(length, chunks), block_n) * block_n
    splits = triton.cdiv(length, split_len)
    m_part = torch.empty(bsz * hkv, splits, rows, dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    scale_log2 = float(scale) * LOG2E
    # The interpreter's tl.dot multiplies bf16 bit patterns (triton-lang/triton#11584): upcast there only.
    upcast = k.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    _row_stats_kernel[(triton.cdiv(rows, block_m), bsz * hkv, splits)](
        qw, k, pos, m_part, l_part,
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        hkv, rows, window, length, dim, split_len, scale_log2,
        CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, UPCAST=upcast,
    )
    # Merge the chunks: lse2 = log2(sum_c l_c * 2^(m_c)), in base 2 like the kernels.
    m_max = m_part.amax(1, keepdim=True)
    m_safe = torch.where(torch.isinf(m_max), torch.zeros_like(m_max), m_max)
    total = (l_part * torch.exp2(m_part - m_safe)).sum(1)
    lse2 = (m_safe.squeeze(1) + torch.log2(total)).contiguous()
    out = torch.empty(bsz, hkv, length, dtype=torch.float32, device=q.device)
    _key_scores_kernel[(triton.cdiv(length, block_n), bsz * hkv)](
        qw, k, pos, lse2, out,
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        hkv, rows, window, length, dim, scale_log2, 1.0 / rows,
        CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, UPCAST=upcast,
    )
    return out


def window_key_scores(q, k, pos, causal: bool, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """Window key scores ``[B, Hkv, Lk]``; ``backend`` "auto" uses Triton where it runs."""
    from spbench.kernels.executor import triton_available  # noqa: PLC0415 - avoid an import cycle

    use_triton = backend == "triton" or (backend == "auto" and triton is not None and triton_available(q.device))
    if use_triton:
        return window_key_scores_triton(q, k, pos, causal, scale)
    return window_key_scores_reference(q, k, pos, causal, scale)


def smooth_scores(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """1-D moving average along the last dim (stride 1, same length).

    Edges average only the real neighbours (``count_include_pad=False``), so a
    key at the border is not diluted by padding.
    """
    if kernel <= 1:
        return scores
    shape = scores.shape
    flat = scores.reshape(-1, 1, shape[-1])
    out = torch.nn.functional.avg_pool1d(flat, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    return out.reshape(shape)


def score_flops(batch: int, q_heads: int, window: int, length: int, head_dim: int) -> float:
    """FLOPs of the two scoring passes (each recomputes W x L logits per query head)."""
    return 2 * 2.0 * batch * q_heads * window * length * head_dim


__all__ = ["score_flops", "smooth_scores", "window_key_scores", "window_key_scores_reference", "window_key_scores_triton", "window_positions"]
