"""How a 2-D grid of neurons is tiled over a 2-D grid of ranks, and which input a tile needs.

Every layer's (height, width) grid of neurons is cut by the same process grid ``py x px``
(a rank owns all maps of its tile). Any rank count works: tiles may be uneven (the first rows
of the grid get one extra row, as ``numpy.array_split`` does), the grid need not be square, and
a tile may even be empty when a layer has fewer rows than the grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1): rows y0..y1-1, cols x0..x1-1


def split_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``range(n)`` into ``parts`` contiguous pieces whose sizes differ by at most one."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out


def box_empty(b: Box) -> bool:
    return b[1] <= b[0] or b[3] <= b[2]


def box_intersect(a: Box, b: Box) -> Box | None:
    y0, y1 = max(a[0], b[0]), min(a[1], b[1])
    x0, x1 = max(a[2], b[2]), min(a[3], b[3])
    if y1 <= y0 or x1 <= x0:
        return None
    return (y0, y1, x0, x1)


def box_shape(b: Box) -> tuple[int, int]:
    return (max(0, b[1] - b[0]), max(0, b[3] - b[2]))


def input_window(tile: Box, kernel: int, stride: int) -> Box:
    """The input region a tile of outputs reads: output ``o`` reads inputs ``o*stride .. o*stride+kernel-1``."""
    if box_empty(tile):
        return (0, 0, 0, 0)
    y0, y1, x0, x1 = tile
    return (y0 * stride, (y1 - 1) * stride + kernel, x0 * stride, (x1 - 1) * stride + kernel)


@dataclass(frozen=True)
class ProcGrid:
    """A ``py x px`` grid of ranks; rank r sits at row ``r // px``, column ``r % px``."""

    py: int
    px: int

    @property
    def size(self) -> int:
        return self.py * self.px

    def coords(self, rank: int) -> tuple[int, int]:
        return divmod(rank, self.px)

    @classmethod
    def for_ranks(cls, n: int, shape: tuple[int, int] | None = None) -> "ProcGrid":
        """The factorisation ``py * px = n`` whose tiles have the smallest perimeter (least halo).

        For a square layer this is the most square grid; 6 ranks give 2 x 3, 5 ranks give 1 x 5.
        """
        if n < 1:
            raise ValueError(f"rank count must be >= 1, got {n}")
        h, w = shape if shape is not None else (1, 1)
        best = None
        for py in range(1, n + 1):
            if n % py:
                continue
            px = n // py
            cost = (h / py + w / px, abs(py - px), py)  # perimeter, then squareness, then fewer rows
            if best is None or cost < best[0]:
                best = (cost, py, px)
        assert best is not None
        return cls(best[1], best[2])


@dataclass(frozen=True)
class Partition:
    """One layer's ``(height, width)`` neuron grid tiled over a process grid."""

    shape: tuple[int, int]
    grid: ProcGrid

    @cached_property
    def _rows(self) -> list[tuple[int, int]]:
        return split_bounds(self.shape[0], self.grid.py)

    @cached_property
    def _cols(self) -> list[tuple[int, int]]:
        return split_bounds(self.shape[1], self.grid.px)

    def tile(self, rank: int) -> Box:
        ry, rx = self.grid.coords(rank)
        (y0, y1), (x0, x1) = self._rows[ry], self._cols[rx]
        return (y0, y1, x0, x1)

    @cached_property
    def tiles(self) -> list[Box]:
        return [self.tile(r) for r in range(self.grid.size)]

    def windows(self, kernel: int, stride: int) -> list[Box]:
        """Per rank, the input window its tile of this (output) layer reads."""
        return [input_window(t, kernel, stride) for t in self.tiles]

    def owners(self, box: Box) -> list[tuple[int, Box]]:
        """The ranks that own part of ``box``, with the part each owns (global coordinates)."""
        out = []
        for r, t in enumerate(self.tiles):
            inter = box_intersect(t, box)
            if inter is not None:
                out.append((r, inter))
        return out
