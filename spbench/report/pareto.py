"""Pareto frontiers of quality against efficiency.

A point is on the frontier when no other point is at least as good on both
axes and strictly better on one. Consequences, documented:

* Ties: identical points do not dominate each other, so all copies of a
  frontier point are on the frontier (the frontier table lists each, e.g.
  two methods that land on the same measurement); a point equal to another
  on one axis and worse on the other is dominated.
* Directions: each axis is higher-is-better or lower-is-better; values are
  flipped internally so "better" is always "larger".
* Missing values: a point with NaN or +-Inf on either axis is never on the
  frontier and never dominates another (a failed cell has no position).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from spbench.report.metrics import Metric

_CHUNK = 2048  # rows compared at once: n x CHUNK booleans of memory


def pareto_mask(x: Sequence[float], y: Sequence[float], x_higher: bool = True, y_higher: bool = True) -> np.ndarray:
    """Boolean mask of the non-dominated points (see module docstring)."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D and of equal length, got {xs.shape} and {ys.shape}")
    finite = np.isfinite(xs) & np.isfinite(ys)
    # Flip lower-is-better axes so that larger is better on both.
    bx = np.where(finite, xs if x_higher else -xs, -np.inf)
    by = np.where(finite, ys if y_higher else -ys, -np.inf)
    keep = finite.copy()
    cx, cy = bx[finite], by[finite]  # only finite points can dominate
    for start in range(0, len(xs), _CHUNK):
        px = bx[start : start + _CHUNK, None]
        py = by[start : start + _CHUNK, None]
        no_worse = (cx[None, :] >= px) & (cy[None, :] >= py)
        better = (cx[None, :] > px) | (cy[None, :] > py)
        dominated = (no_worse & better).any(axis=1)
        keep[start : start + _CHUNK] &= ~dominated
    return keep


def frontier(frame, quality: Metric, efficiency: Metric):
    """The frontier rows of ``frame`` (a DataFrame), best efficiency first.

    Rows missing either column count as missing values.
    """
    import pandas as pd

    if frame.empty or quality.name not in frame.columns or efficiency.name not in frame.columns:
        return frame.iloc[0:0]
    x = pd.to_numeric(frame[efficiency.name], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(frame[quality.name], errors="coerce").to_numpy(dtype=float)
    mask = pareto_mask(x, y, efficiency.higher_is_better, quality.higher_is_better)
    front = frame[mask]
    return front.sort_values(
        [efficiency.name, quality.name],
        ascending=[not efficiency.higher_is_better, not quality.higher_is_better],
        kind="mergesort",  # stable: ties keep their record order
    )
