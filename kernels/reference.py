"""Plain-PyTorch references for every kernel in spbench.kernels.

These are slow and simple on purpose: tests compare the Triton kernels
against them (on the CPU under TRITON_INTERPRET=1, and on the GPU).
All math in float32 (or float64 when the inputs are float64).
"""

from __future__ import annotations

import torch

from spbench.plan import LEVELS


def _expand_kv(x: torch.Tensor, hq: int) -> torch.Tensor:
    """Repeat KV heads to match Hq (references only; executors never do this)."""
    return x if x.shape[1] == hq else x.repeat_interleave(hq // x.shape[1], dim=1)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def exact_attention(q, k, v, causal: bool = False, scale: float | None = None, chunk: int = 1024, rows: torch.Tensor | None = None):
    """Exact softmax attention in fp32, chunked over queries (no L x L matrix).

    ``rows``: optional 1-D tensor of query positions; then only those rows are
    computed and the result is ``[B, Hq, len(rows), D]``. Causal masking is
    top-left aligned (query t sees keys 0..t), as SDPA's ``is_causal``.
    Returns float32 (float64 for float64 inputs).
    """
    acc = _acc_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    hq, group = q.shape[1], q.shape[1] // k.shape[1]
    positions = torch.arange(q.shape[2], device=q.device) if rows is None else rows.to(q.device)
    out = torch.empty(q.shape[0], hq, positions.numel(), v.shape[-1], dtype=acc, device=q.device)
    key_pos = torch.arange(k.shape[2], device=q.device)
    for start in range(0, positions.numel(), chunk):
        pos = positions[start : start + chunk]
        qc = q[:, :, pos].to(acc)
        # GQA without repeating K/V: fold the query heads of one KV head together.
        qg = qc.view(q.shape[0], k.shape[1], group * pos.numel(), q.shape[-1])
        s = torch.matmul(qg, k.to(acc).transpose(-1, -2)) * scale
        s = s.view(q.shape[0], hq, pos.numel(), k.shape[2])
        if causal:
            s = s.masked_fill(key_pos[None, :] > pos[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
        o = torch.matmul(p.view(q.shape[0], k.shape[1], group * pos.numel(), k.shape[2]), v.to(acc))
        out[:, :, start : start + chunk] = o.view(q.shape[0], hq, pos.numel(), v.shape[-1])
    return out


def pool_kv(x: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pool keys/values ``[B, H, L, D]`` in groups of p along L.

    A group cut short by the end of the sequence averages the m < p keys it
    has. Returns (pooled ``[B, H, ceil(L/p), D]``, group sizes ``[ceil(L/p)]``).
    """
    length = x.shape[2]
    groups = (length + p - 1) // p
    pad = groups * p - length
    padded = torch.nn.functional.pad(x, (0, 0, 0, pad))
    sizes = torch.full((groups,), p, dtype=torch.int64, device=x.device)
    sizes[-1] = p - pad
    summed = padded.view(x.shape[0], x.shape[1], groups, p, x.shape[-1]).sum(3)
    return summed / sizes.to(x.dtype)[:, None], sizes


def pyramid_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    levels: torch.Tensor,
    block_q: int = 128,
    block_kv: int = 64,
    causal: bool = False,
    scale: float | None = None,
    row_scale: torch.Tensor | None = None,
    compensation: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Multi-level block-sparse attention, computed the obvious way.

    For every level p, keys/values are pooled in groups of p (ragged tail:
    mean of the m keys, logit + ln m); pooled key j of level p is visible to
    query t when its block's level for t's query block is p and, if causal,
    when its last position j*p+m-1 <= t. All visible logits of all levels go
    into one softmax. A row with nothing visible gives zeros (lse = -inf).

    Epilogue (rectification): ``out = row_scale[qb] * out + compensation[qb]``
    with ``row_scale`` ``[B, Hq, NQ]`` and ``compensation`` ``[B, Hq, NQ, Dv]``.
    Returns float32 ``[B, Hq, Lq, Dv]`` (and lse ``[B, Hq, Lq]``).
    """
    acc = _acc_dtype(q)
    bsz, hq, lq, _ = q.shape
    lk = k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kx, vx = _expand_kv(k, hq).to(acc), _expand_kv(v, hq).to(acc)
    qx = q.to(acc)
    qblock = torch.arange(lq, device=q.device) // block_q
    tpos = torch.arange(lq, device=q.device)
    logits, values = [], []
    for p in LEVELS:
        kp, sizes = pool_kv(kx, p)
        vp, _ = pool_kv(vx, p)
        start = torch.arange(kp.shape[2], device=q.device) * p
        last = start + sizes - 1
        kblock = start // block_kv
        # level of (query t, pooled key j) = levels[b, h, qblock[t], kblock[j]]
        lv = levels[:, :, qblock][:, :, :, kblock]
        visible = lv == p
        if causal:
            visible = visible & (last[None, :] <= tpos[:, None])
        s = torch.matmul(qx, kp.transpose(-1, -2)) * scale + torch.log(sizes.to(acc))
        logits.append(s.masked_fill(~visible, float("-inf")))
        values.append(vp)
    s = torch.cat(logits, dim=-1)
    vals = torch.cat(values, dim=2)
    lse = torch.logsumexp(s, dim=-1)
    prob = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    out = torch.matmul(prob, vals)
    if row_scale is not None:
        out = out * row_scale.to(acc)[:, :, qblock, None]
    if compensation is not None:
        out = out + compensation.to(acc)[:, :, qblock, :]
    return (out, lse) if return_lse else out


def repeated_keys_reference(q, k, v, levels, block_q=128, block_kv=64, causal=False, scale=None):
    """Second, independent reference: dense attention over keys where each
    pooled key/value of a level-p block is repeated (group size) times.

    Used to cross-check :func:`pyramid_attention_reference` (the identity
    DESIGN.md states). Loops over query blocks; tiny shapes only.
    """
    acc = _acc_dtype(q)
    hq, lq, lk = q.shape[1], q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kx, vx = _expand_kv(k, hq).to(acc), _expand_kv(v, hq).to(acc)
    out = torch.zeros(q.shape[0], hq, lq, v.shape[-1], dtype=acc, device=q.device)
    for b in range(q.shape[0]):
        for h in range(hq):
            for qb in range((lq + block_q - 1) // block_q):
                rows = slice(qb * block_q, min(lq, (qb + 1) * block_q))
                keys, vals, last = [], [], []
                for kb in range((lk + block_kv - 1) // block_kv):
                    p = int(levels[b, h, qb, kb])
                    if p == 0:
                        continue
                    for g0 in range(kb * block_kv, min(lk, (kb + 1) * block_kv), p):
                        g1 = min(g0 + p, lk)
                        kmean, vmean = kx[b, h, g0:g1].mean(0), vx[b, h, g0:g1].mean(0)
                        for _ in range(g1 - g0):  # repeat the pooled key m times
                            keys.append(kmean)
                            vals.append(vmean)
                            last.append(g1 - 1)
                if not keys:
                    continue
                s = q[b, h, rows].to(acc) @ torch.stack(keys).T * scale
                if causal:
                    t = torch.arange(rows.start, rows.stop, device=q.device)
                    s = s.masked_fill(torch.tensor(last, device=q.device)[None, :] > t[:, None], float("-inf"))
                prob = torch.softmax(s, -1).nan_to_num(0.0)
                out[b, h, rows] = prob @ torch.stack(vals)
    return out


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool = False) -> float:
    """FLOPs of dense attention forward (two matmuls), halved-ish for causal."""
    pairs = q_len * kv_len
    if causal:
        pairs = sum_causal_pairs(q_len, kv_len)
    return 4.0 * batch * heads * pairs * head_dim


def sum_causal_pairs(q_len: int, kv_len: int) -> int:
    """Number of visible (t, s) pairs with s <= t, t < q_len, s < kv_len."""
    full = max(0, q_len - kv_len)  # rows that see every key
    tri = min(q_len, kv_len)
    return tri * (tri + 1) // 2 + full * kv_len
