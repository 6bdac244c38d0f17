"""Synthetic and captured Q/K/V workloads.

``random``
    i.i.d. standard normal Q, K, V. Attention is nearly uniform, the worst
    case for sparse quality; use it for speed.

``video``
    Seeded synthetic tokens on a T x H x W latent grid, in row-major
    (t, y, x) order as a video DiT flattens them, with attention
    concentrated the way video DiT attention is:

    * spatio-temporal locality: each KV head draws length scales
      (l_t, l_y, l_x) in grid cells and random Fourier features
      f(p) = [cos(w.p), sin(w.p)] / sqrt(d/2) with w ~ N(0, diag(1/l^2)),
      so q(p).k(p') ~ a^2 exp(-|(p - p') / l|^2 / 2): nearby tokens attend
      to each other. Heads mix spatial (short l_t), temporal (long l_t,
      short l_y, l_x) and broad patterns, as DiT heads do;
    * a few global "sink" tokens (0.2%, at least one) that every query
      attends to, via a shared direction in Q and K;
    * noise on Q and K so the structure is not exact, and values that are
      a smooth function of position plus noise (pooling them is not free).

    The sharpness ``a`` puts the peak logit near 12 (scaled by 1/sqrt(d)),
    which makes the top 10% of 128 x 64 blocks hold most of the mass;
    :func:`block_mass_concentration` measures it. GQA: query heads of one
    KV head share its features (as in real models, they attend alike).

``trace:PATH``
    Real Q/K/V captured from a model (``spbench capture``), safetensors.

The grid is ``grid=(T, H, W)`` or derived from ``seq`` with a 16:9 frame
and T about H/2 (:func:`grid_for_seq`); when T*H*W > seq the last frame is
partly filled.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from spbench.errors import SpbenchError

KINDS = ("random", "video", "trace:PATH")


def grid_for_seq(seq: int) -> tuple[int, int, int]:
    """A T x H x W grid holding ``seq`` tokens, 16:9 frames, T about H/2."""
    h = max(1, round((9 * seq / 8) ** (1 / 3)))
    w = max(1, round(16 * h / 9))
    h = min(h, max(1, seq // w)) if seq < h * w else h
    t = math.ceil(seq / (h * w))
    return t, h, w


def grid_positions(seq: int, grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """(t, y, x) of each of the first ``seq`` cells in row-major order, float ``[seq, 3]``."""
    t, h, w = grid
    if t * h * w < seq:
        raise SpbenchError(f"grid {t}x{h}x{w} holds {t * h * w} tokens, fewer than seq={seq}")
    idx = torch.arange(seq, device=device)
    return torch.stack([idx // (h * w), (idx // w) % h, idx % w], dim=-1).float()


def make_qkv(
    kind: str,
    batch: int,
    heads: int,
    kv_heads: int,
    seq: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    grid: tuple[int, int, int] | None = None,
    kv_seq: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build ``q [B, heads, seq, D]`` and ``k, v [B, kv_heads, kv_seq, D]``."""
    if heads % kv_heads != 0:
        raise SpbenchError(f"heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    kv_seq = seq if kv_seq is None else kv_seq
    if kind == "random":
        gen = torch.Generator(device=device).manual_seed(seed)
        q = torch.randn(batch, heads, seq, head_dim, generator=gen, device=device, dtype=torch.float32)
        k = torch.randn(batch, kv_heads, kv_seq, head_dim, generator=gen, device=device, dtype=torch.float32)
        v = torch.randn(batch, kv_heads, kv_seq, head_dim, generator=gen, device=device, dtype=torch.float32)
        return q.to(dtype), k.to(dtype), v.to(dtype)
    if kind == "video":
        if kv_seq != seq:
            raise SpbenchError("the video workload is self-attention: kv_seq must equal seq")
        return _video_qkv(batch, heads, kv_heads, seq, head_dim, dtype, torch.device(device), seed, grid)
    if kind.startswith("trace:"):
        from spbench.traces import load_trace

        return load_trace(Path(kind[len("trace:") :]), dtype=dtype, device=device)
    raise SpbenchError(f"unknown workload {kind!r}: use random, video or trace:PATH")


def _video_qkv(batch, heads, kv_heads, seq, head_dim, dtype, device, seed, grid):
    grid = grid or grid_for_seq(seq)
    pos = grid_positions(seq, grid, device)
    group = heads // kv_heads
    half = head_dim // 2
    q = torch.empty(batch, heads, seq, head_dim, dtype=dtype, device=device)
    k = torch.empty(batch, kv_heads, seq, head_dim, dtype=dtype, device=device)
    v = torch.empty(batch, kv_heads, seq, head_dim, dtype=dtype, device=device)
    # Parameters come from a CPU generator so they are identical on every device.
    cpu = torch.Generator().manual_seed(seed)
    n_global = max(1, seq // 500)
    # Features have unit norm, so the peak scaled logit is sharp^2 / sqrt(d): aim near 12.
    sharp = math.sqrt(12.0 * math.sqrt(head_dim))
    patterns = torch.tensor([[0.6, 3.0, 3.0], [4.0, 1.5, 1.5], [1.5, 5.0, 5.0], [0.8, 2.0, 6.0]])
    for b in range(batch):
        global_idx = torch.randperm(seq, generator=cpu)[:n_global].to(device)
        for hk in range(kv_heads):
            scales = patterns[(hk + b) % len(patterns)] * (0.75 + 0.5 * torch.rand(3, generator=cpu))
            omega = (torch.randn(half, 3, generator=cpu) / scales).to(device)
            phase = pos @ omega.T  # [seq, half]
            feat = torch.cat([phase.cos(), phase.sin()], dim=-1) / math.sqrt(half)
            sink_dir = torch.randn(head_dim, generator=cpu).to(device)
            sink_dir = sink_dir / sink_dir.norm()
            noise = lambda scale: scale * torch.randn(seq, head_dim, generator=cpu).to(device) / math.sqrt(head_dim)  # noqa: E731
            key = sharp * feat + noise(0.3 * sharp)
            key[global_idx] += 1.3 * sharp * sink_dir
            k[b, hk] = key.to(dtype)
            mix = torch.randn(head_dim, head_dim, generator=cpu).to(device) / math.sqrt(head_dim)
            v[b, hk] = (feat @ mix * math.sqrt(half) + noise(0.5)).to(dtype)
            for g in range(group):
                query = sharp * feat + noise(0.3 * sharp) + 0.6 * sharp * sink_dir
                q[b, hk * group + g] = query.to(dtype)
    return q, k, v


def block_mass_concentration(
    q: torch.Tensor,
    k: torch.Tensor,
    block_q: int = 128,
    block_kv: int = 64,
    top: float = 0.10,
    max_query_blocks: int = 8,
    causal: bool = False,
    seed: int = 0,
) -> float:
    """Mean share of attention mass held by the top ``top`` fraction of KV blocks.

    Exact softmax rows for up to ``max_query_blocks`` sampled query blocks per
    head (so it is cheap at 110k tokens), summed per KV block, sorted, the top
    fraction's mass averaged over rows and heads.
    """
    bsz, hq, lq, d = q.shape
    lk = k.shape[2]
    nq, nk = math.ceil(lq / block_q), math.ceil(lk / block_kv)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randperm(nq, generator=gen)[: min(max_query_blocks, nq)]
    keep = max(1, round(top * nk))
    shares = []
    group = hq // k.shape[1]
    for b in range(bsz):
        for h in range(hq):
            kk = k[b, h // group].float()
            for qb in picks.tolist():
                rows = torch.arange(qb * block_q, min(lq, (qb + 1) * block_q), device=q.device)
                s = (q[b, h, rows].float() @ kk.T) * d**-0.5
                if causal:
                    s = s.masked_fill(torch.arange(lk, device=q.device)[None, :] > rows[:, None], float("-inf"))
                p = torch.softmax(s, dim=-1)
                pad = nk * block_kv - lk
                per_block = torch.nn.functional.pad(p, (0, pad)).view(len(rows), nk, block_kv).sum(-1).mean(0)
                shares.append(per_block.sort(descending=True).values[:keep].sum().item())
    return float(sum(shares) / len(shares))
