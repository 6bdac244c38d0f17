"""Token reordering along a 3-D Hilbert-like curve over the latent grid.

Video DiTs flatten latent tokens in row-major (t, y, x) order, so a block of
64 consecutive tokens is a 1 x 1 x 64 strip of one row: block-sparse methods
then pool tokens that are far apart in the picture. Reordering the tokens
along a space-filling curve makes each block a compact 3-D patch (a
4 x 4 x 4 cube on a power-of-two grid), which is what block pooling assumes.

The curve: every cell (t, y, x) of the ``T x H x W`` grid gets its index on
the 3-D Hilbert curve of the smallest power-of-two cube that holds the grid
(Skilling's transpose algorithm, "Programming the Hilbert curve", 2004), and
cells are sorted by that index. Cells of the cube outside the grid are
simply skipped, so on a non-power-of-two grid the order is Hilbert-like:
consecutive tokens are neighbours except where the curve leaves the grid and
comes back. The axes are fed to the curve as (t, y, x) without rescaling.

``perm[i]`` is the original (row-major) position of the i-th token in curve
order: ``x_curve = x[..., perm, :]`` and ``x = x_curve[..., inverse, :]``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from spbench.errors import SpbenchError

REORDERS = ("none", "hilbert")


def hilbert_index(coords: np.ndarray, bits: int) -> np.ndarray:
    """Hilbert-curve index of integer points ``coords [N, n]`` in a ``2**bits`` cube.

    Skilling's AxesToTranspose followed by bit interleaving; vectorised over
    the N points. Returns int64 indices in ``[0, 2**(bits*n))``.
    """
    x = np.array(coords, dtype=np.int64, copy=True)
    if x.ndim != 2:
        raise ValueError("coords must be [N, dims]")
    n = x.shape[1]
    if bits <= 0:
        return np.zeros(x.shape[0], dtype=np.int64)
    if bits * n > 62:
        raise ValueError("grid too large for a 64-bit Hilbert index")
    top = 1 << (bits - 1)
    # Inverse undo of the excess work.
    q = top
    while q > 1:
        p = q - 1
        for i in range(n):
            has = (x[:, i] & q) != 0
            # Where the bit is set: invert the low bits of axis 0.
            x[:, 0] = np.where(has, x[:, 0] ^ p, x[:, 0])
            # Elsewhere: exchange the low bits of axis 0 and axis i.
            t = np.where(has, 0, (x[:, 0] ^ x[:, i]) & p)
            x[:, 0] ^= t
            x[:, i] ^= t
        q >>= 1
    # Gray encode.
    for i in range(1, n):
        x[:, i] ^= x[:, i - 1]
    t = np.zeros(x.shape[0], dtype=np.int64)
    q = top
    while q > 1:
        t = np.where((x[:, n - 1] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x ^= t[:, None]
    # Interleave: the most significant bit of axis 0 comes first.
    index = np.zeros(x.shape[0], dtype=np.int64)
    for b in range(bits - 1, -1, -1):
        for i in range(n):
            index = (index << 1) | ((x[:, i] >> b) & 1)
    return index


@functools.lru_cache(maxsize=64)
def _hilbert_perm_np(grid: tuple[int, int, int]) -> np.ndarray:
    t, h, w = grid
    side = max(grid)
    bits = max(1, int(np.ceil(np.log2(side)))) if side > 1 else 1
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([tt.ravel(), yy.ravel(), xx.ravel()], axis=1)
    return np.argsort(hilbert_index(coords, bits), kind="stable")


def check_grid(grid) -> tuple[int, int, int]:
    try:
        dims = tuple(int(d) for d in grid)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 3 or min(dims) <= 0:
        raise SpbenchError(f"a latent grid must be three positive integers (T, H, W), got {grid!r}")
    return dims  # type: ignore[return-value]


def hilbert_permutation(grid, device: torch.device | str = "cpu") -> torch.Tensor:
    """``perm`` (int64, length T*H*W): row-major positions in Hilbert order."""
    return torch.from_numpy(_hilbert_perm_np(check_grid(grid)).copy()).to(device)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return inv


class Reorderer:
    """Cached forward/inverse index tensors for one grid, device and order.

    ``apply`` / ``restore`` act on a sequence dimension (default -2, the
    ``[B, H, L, D]`` layout). Tokens beyond ``T*H*W`` (text appended after
    the video) keep their positions at the end.
    """

    def __init__(self, kind: str, grid, device: torch.device | str = "cpu") -> None:
        if kind not in REORDERS:
            raise SpbenchError(f"reorder must be one of {', '.join(REORDERS)}, got {kind!r}")
        self.kind = kind
        self.grid = check_grid(grid)
        self.video_len = self.grid[0] * self.grid[1] * self.grid[2]
        self._cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.device = torch.device(device)

    def indices(self, total_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), total_len)
        if key not in self._cache:
            perm = hilbert_permutation(self.grid, device)
            if total_len > self.video_len:
                tail = torch.arange(self.video_len, total_len, device=device)
                perm = torch.cat([perm, tail])
            self._cache[key] = (perm, inverse_permutation(perm))
        return self._cache[key]

    def apply(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        if self.kind == "none":
            return x
        perm, _ = self.indices(x.shape[dim], x.device)
        return x.index_select(dim, perm)

    def restore(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        if self.kind == "none":
            return x
        _, inv = self.indices(x.shape[dim], x.device)
        return x.index_select(dim, inv)
