"""The 3-D Hilbert-like token order and its inverse."""

import numpy as np
import pytest
import torch

from spbench.errors import SpbenchError
from spbench.integrations.reorder import Reorderer, hilbert_index, hilbert_permutation, inverse_permutation


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_full_cube_curve_visits_every_cell_through_neighbours(bits):
    side = 1 << bits
    cells = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    index = hilbert_index(cells, bits)
    assert sorted(index.tolist()) == list(range(side**3))  # a bijection onto 0..n-1
    path = cells[np.argsort(index)]
    steps = np.abs(np.diff(path, axis=0)).sum(axis=1)
    assert steps.max() == 1  # each step moves to a face neighbour: a true Hilbert curve
    assert path[0].tolist() == [0, 0, 0]


def test_non_power_of_two_grid_is_a_permutation_with_local_blocks():
    grid = (5, 6, 10)
    perm = hilbert_permutation(grid)
    assert sorted(perm.tolist()) == list(range(300))
    t, y, x = perm // 60, (perm // 10) % 6, perm % 10
    coords = torch.stack([t, y, x], -1).float()
    # Blocks of 64 consecutive curve tokens are compact: far smaller spread than raster order's rows.
    curve_spread = torch.stack([c.max(0).values - c.min(0).values for c in coords[:256].split(64)]).sum(-1).float().mean()
    raster = torch.stack([torch.arange(300) // 60, (torch.arange(300) // 10) % 6, torch.arange(300) % 10], -1).float()
    raster_spread = torch.stack([c.max(0).values - c.min(0).values for c in raster[:256].split(64)]).sum(-1).float().mean()
    assert curve_spread < raster_spread


def test_reorder_round_trip_keeps_text_tail_in_place():
    grid = (3, 4, 6)
    video, text = 72, 5
    x = torch.randn(2, 3, video + text, 8)
    r = Reorderer("hilbert", grid)
    y = r.apply(x)
    assert not torch.equal(y[:, :, :video], x[:, :, :video])
    assert torch.equal(y[:, :, video:], x[:, :, video:])
    assert torch.equal(r.restore(y), x)
    perm = hilbert_permutation(grid)
    assert torch.equal(perm[inverse_permutation(perm)], torch.arange(video))
    assert torch.equal(Reorderer("none", grid).apply(x), x)


def test_bad_reorder_inputs_are_clear():
    with pytest.raises(SpbenchError, match="reorder must be one of"):
        Reorderer("zigzag", (1, 2, 3))
    with pytest.raises(SpbenchError, match="three positive integers"):
        Reorderer("hilbert", (0, 2, 3))
