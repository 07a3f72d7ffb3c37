import itertools

import pytest

from repro.engine.partition import (Partition, ProcGrid, box_intersect, input_window, split_bounds)


@pytest.mark.parametrize("n,parts", [(10, 3), (7, 7), (3, 5), (0, 2), (100, 6)])
def test_split_bounds_cover_exactly(n, parts):
    b = split_bounds(n, parts)
    assert len(b) == parts
    assert b[0][0] == 0 and b[-1][1] == n
    assert all(b[i][1] == b[i + 1][0] for i in range(parts - 1))
    sizes = [e - s for s, e in b]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8, 12])
def test_proc_grid_any_rank_count(n):
    g = ProcGrid.for_ranks(n, (40, 40))
    assert g.py * g.px == n
    assert abs(g.py - g.px) <= max(g.py, g.px)  # some valid factorisation
    if n == 4:
        assert (g.py, g.px) == (2, 2)
    if n == 6:
        assert {g.py, g.px} == {2, 3}


def test_proc_grid_follows_aspect_ratio():
    g = ProcGrid.for_ranks(4, (10, 1000))  # wide layer: cut the columns
    assert (g.py, g.px) == (1, 4)


@pytest.mark.parametrize("n,shape", [(1, (9, 9)), (3, (9, 7)), (4, (5, 11)), (6, (13, 13)), (6, (2, 2))])
def test_tiles_partition_the_grid(n, shape):
    part = Partition(shape, ProcGrid.for_ranks(n, shape))
    seen = [[0] * shape[1] for _ in range(shape[0])]
    for y0, y1, x0, x1 in part.tiles:
        for y, x in itertools.product(range(y0, y1), range(x0, x1)):
            seen[y][x] += 1
    assert all(v == 1 for row in seen for v in row)


def test_input_window_and_owners():
    assert input_window((2, 4, 0, 3), kernel=5, stride=2) == (4, 11, 0, 9)
    assert input_window((3, 3, 0, 2), kernel=5, stride=2) == (0, 0, 0, 0)  # empty tile reads nothing
    part = Partition((10, 10), ProcGrid(2, 2))
    owners = part.owners((3, 7, 3, 7))
    assert [r for r, _ in owners] == [0, 1, 2, 3]
    assert box_intersect((0, 5, 0, 5), (5, 9, 0, 5)) is None
