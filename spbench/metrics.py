"""Quality of an attention output against exact attention, on sampled query rows.

Exact attention at 110k tokens is affordable only for a sample of rows, so
the metrics compare the method's output with exact fp32 attention on
``n_rows`` query positions drawn with a fixed seed (all batches and heads):

* ``rel_l2``: ||out - ref|| / ||ref|| over the sampled rows;
* ``cosine``: cosine similarity of the flattened sampled outputs;
* ``max_abs``: the largest absolute difference.
"""

from __future__ import annotations

import torch

from spbench.kernels.reference import exact_attention


def sample_rows(q_len: int, n_rows: int = 256, seed: int = 0, device=None) -> torch.Tensor:
    """Sorted query positions to evaluate: all of them when q_len <= n_rows."""
    if q_len <= n_rows:
        return torch.arange(q_len, device=device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(q_len, generator=gen)[:n_rows].sort().values.to(device)


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """rel_l2, cosine and max_abs between two tensors (in float64)."""
    a, b = out.double().flatten(), ref.double().flatten()
    diff = a - b
    ref_norm = b.norm()
    return {
        "rel_l2": float(diff.norm() / ref_norm) if ref_norm > 0 else float(diff.norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
        "max_abs": float(diff.abs().max()) if diff.numel() else 0.0,
    }


def quality_vs_exact(q, k, v, out, causal: bool = False, scale: float | None = None, n_rows: int = 256, seed: int = 0) -> dict[str, float]:
    """Error metrics of ``out`` against exact attention on sampled rows."""
    rows = sample_rows(q.shape[2], n_rows, seed, q.device)
    ref = exact_attention(q, k, v, causal=causal, scale=scale, rows=rows, chunk=256)
    metrics = compare(out[:, :, rows].float(), ref)
    metrics["error_rows"] = int(rows.numel())
    return metrics
