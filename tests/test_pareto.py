"""Pareto frontiers on hand-made data: both directions, ties, missing values, chunking."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from spbench.report import pareto
from spbench.report.metrics import Metric
from spbench.report.pareto import frontier, pareto_mask


def brute_force(x, y, x_higher, y_higher):
    """The definition, literally: i is kept unless some j is no worse on both and better on one."""
    sx = [v if x_higher else -v for v in x]
    sy = [v if y_higher else -v for v in y]
    keep = []
    for i in range(len(x)):
        if not (np.isfinite(sx[i]) and np.isfinite(sy[i])):
            keep.append(False)
            continue
        dominated = any(
            np.isfinite(sx[j]) and np.isfinite(sy[j]) and sx[j] >= sx[i] and sy[j] >= sy[i] and (sx[j] > sx[i] or sy[j] > sy[i])
            for j in range(len(x))
        )
        keep.append(not dominated)
    return keep


def test_both_higher():
    # speedup (higher) vs cosine (higher)
    x = [1.0, 2.0, 0.5, 0.4, 3.0]
    y = [1.0, 0.5, 2.0, 0.4, 0.1]
    assert pareto_mask(x, y).tolist() == [True, True, True, False, True]


def test_lower_is_better_on_each_axis():
    # density (lower) vs rel_l2 (lower): (0.1, 0.5) and (0.5, 0.1) trade off; (0.5, 0.5) is dominated by both.
    x = [0.1, 0.5, 0.5, 1.0]
    y = [0.5, 0.1, 0.5, 0.0]
    assert pareto_mask(x, y, x_higher=False, y_higher=False).tolist() == [True, True, False, True]
    # speedup (higher) vs rel_l2 (lower)
    x = [1.0, 2.0, 4.0, 3.0]
    y = [0.0, 0.1, 0.5, 0.6]
    assert pareto_mask(x, y, x_higher=True, y_higher=False).tolist() == [True, True, True, False]
    # The same data read the other way round flips the answer.
    assert pareto_mask(x, y, x_higher=False, y_higher=True).tolist() == [True, True, False, True]


def test_ties():
    # Identical frontier points are all kept; equal on one axis and worse on the other is dominated.
    x = [2.0, 2.0, 2.0, 1.0, 1.0]
    y = [1.0, 1.0, 0.5, 3.0, 3.0]
    assert pareto_mask(x, y).tolist() == [True, True, False, True, True]
    # All points identical: all on the frontier.
    assert pareto_mask([1, 1, 1], [2, 2, 2]).all()
    # A single point is its own frontier; no points, no frontier.
    assert pareto_mask([1.0], [1.0]).tolist() == [True]
    assert pareto_mask([], []).tolist() == []


def test_missing_values_are_never_on_the_frontier_and_never_dominate():
    x = [1.0, np.nan, 5.0, 2.0, np.inf]
    y = [1.0, 9.0, np.nan, 0.5, 9.0]
    assert pareto_mask(x, y).tolist() == [True, False, False, True, False]


@pytest.mark.parametrize("x_higher,y_higher", list(itertools.product([True, False], repeat=2)))
def test_matches_the_definition_on_random_data_with_many_ties(monkeypatch, x_higher, y_higher):
    monkeypatch.setattr(pareto, "_CHUNK", 7)  # exercise the chunked comparison
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 40))
        x = rng.integers(0, 5, n).astype(float)
        y = rng.integers(0, 5, n).astype(float)
        x[rng.random(n) < 0.1] = np.nan
        assert pareto_mask(x, y, x_higher, y_higher).tolist() == brute_force(x, y, x_higher, y_higher)


def test_frontier_of_a_frame_sorted_best_efficiency_first():
    frame = pd.DataFrame(
        {
            "method": ["a", "b", "c", "d", "e", "f"],
            "speedup_total": [1.0, 3.0, 2.0, 2.0, 5.0, None],
            "rel_l2": [0.001, 0.2, 0.05, 0.05, 0.9, 0.0],
            "other": ["x", {"nested": 1}, [1, 2], None, 3, "y"],  # columns the analysis ignores
        }
    )
    q = Metric("rel_l2", "rel l2", higher_is_better=False)
    e = Metric("speedup_total", "speedup", higher_is_better=True)
    front = frontier(frame, q, e)
    assert front["method"].tolist() == ["e", "b", "c", "d", "a"]  # f has no speedup; c and d tie
    # Density (lower) as the efficiency axis.
    frame["density"] = [1.0, 0.1, 0.3, 0.2, 0.05, 0.5]
    front = frontier(frame, q, Metric("density", "density", higher_is_better=False))
    assert front["method"].tolist() == ["e", "b", "d", "f"]  # a is dominated by f, c by d
    # A missing column gives an empty frontier, not an error.
    assert frontier(frame, Metric("psnr", "psnr", True), e).empty
