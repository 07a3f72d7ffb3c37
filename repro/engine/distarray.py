"""DistArray: one rank's tile of a ``(batch, maps, height, width)`` array spread over ranks.

Before a layer computes, each rank says which input window its output tile needs; ``fetch``
brings the parts of that window that other ranks own (the halo) and returns it as one array.
``scatter_add`` is the adjoint: it sends each part of a window-shaped gradient back to the rank
that owns it, which adds it into its tile. After that, layer code is single-device code.

The exchange pattern depends only on the partitions, so it is computed once per layer
(:class:`HaloPlan`) and every rank knows, without asking, what to send and what to receive.
Messages are non-blocking; on GPUs device buffers go straight to MPI when it is CUDA-aware,
otherwise they are staged through host memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

from repro.engine.backend import get_array_module, is_gpu, synchronize, to_numpy
from repro.engine.comm import World, cuda_aware_mpi
from repro.engine.partition import Box, Partition, box_empty, box_intersect, box_shape, input_window
from repro.engine.timing import timed

_TAG_FETCH = 11
_TAG_ADJOINT = 12


@dataclass(frozen=True)
class _Piece:
    peer: int
    box: Box  # global coordinates of the piece


@dataclass
class HaloPlan:
    """Who sends what to whom when rank ``rank`` and its peers fetch their windows of ``part``.

    ``windows[q]`` is the (global) input window rank q needs; it may extend past the array's
    bounds, where the fetched values are zero.
    """

    part: Partition
    windows: list[Box]
    rank: int
    sends: list[_Piece] = field(init=False)  # parts of my tile that peers need
    recvs: list[_Piece] = field(init=False)  # parts of my window that peers own
    local: Box | None = field(init=False)  # part of my window I own myself

    def __post_init__(self) -> None:
        if len(self.windows) != self.part.grid.size:
            raise ValueError("one window per rank is needed")
        mine = self.part.tile(self.rank)
        win = self.windows[self.rank]
        self.sends, self.recvs = [], []
        for q in range(self.part.grid.size):
            if q == self.rank:
                continue
            if not box_empty(self.windows[q]):
                inter = box_intersect(mine, self.windows[q])
                if inter is not None:
                    self.sends.append(_Piece(q, inter))
            if not box_empty(win):
                inter = box_intersect(self.part.tile(q), win)
                if inter is not None:
                    self.recvs.append(_Piece(q, inter))
        self.local = None if box_empty(win) else box_intersect(mine, win)

    @property
    def window(self) -> Box:
        return self.windows[self.rank]

    @property
    def tile(self) -> Box:
        return self.part.tile(self.rank)


def _rel(box: Box, origin: Box) -> tuple[slice, slice]:
    """Slices of ``box`` in the coordinates of an array whose top-left corner is ``origin``'s."""
    return (slice(box[0] - origin[0], box[1] - origin[0]), slice(box[2] - origin[2], box[3] - origin[2]))


class _Exchanger:
    """Posts non-blocking messages of xp arrays, staging through host memory when it must."""

    def __init__(self, xp: Any, w: World) -> None:
        self.xp = xp
        self.w = w
        self.gpu = is_gpu(xp)
        self.direct = (not self.gpu) or cuda_aware_mpi()
        self.requests: list[MPI.Request] = []
        self.keep: list[Any] = []

    def send(self, arr: Any, peer: int, tag: int) -> None:
        buf = self.xp.ascontiguousarray(arr)
        if self.gpu:
            if self.direct:
                synchronize(self.xp)
            else:
                buf = to_numpy(buf)
        self.keep.append(buf)
        self.requests.append(self.w.comm.Isend(buf, dest=peer, tag=tag))

    def recv(self, shape: tuple[int, ...], dtype: Any, peer: int, tag: int) -> Any:
        buf = (self.xp if self.direct else np).empty(shape, dtype=dtype)
        self.requests.append(self.w.comm.Irecv(buf, source=peer, tag=tag))
        return buf

    def wait(self) -> None:
        with timed("halo wait"):
            MPI.Request.Waitall(self.requests)
        self.requests, self.keep = [], []

    def to_xp(self, buf: Any) -> Any:
        return self.xp.asarray(buf) if (self.gpu and not self.direct) else buf


class DistArray:
    """This rank's tile ``data[b, c, ty, tx]`` of a global ``(B, C, H, W)`` array."""

    def __init__(self, data: Any, part: Partition, w: World, full: Any = None) -> None:
        self.w = w
        self.part = part
        self.data = data
        self.full = full  # set when every rank holds the whole array (the input images)
        want = box_shape(part.tile(self.w.rank))
        if tuple(data.shape[2:]) != want:
            raise ValueError(f"tile has spatial shape {tuple(data.shape[2:])}, partition says {want}")

    @classmethod
    def from_replicated(cls, full: Any, part: Partition, w: World) -> "DistArray":
        """Every rank holds the whole array (e.g. the same minibatch of images): no messages needed."""
        y0, y1, x0, x1 = part.tile(w.rank)
        return cls(full[:, :, y0:y1, x0:x1], part, w, full=full)

    @property
    def tile(self) -> Box:
        return self.part.tile(self.w.rank)

    def fetch(self, plan: HaloPlan) -> Any:
        """The window ``plan.window`` of the global array (zeros outside its bounds)."""
        return self.fetch_start(plan).wait()

    def fetch_start(self, plan: HaloPlan) -> "PendingFetch":
        """Post the halo messages and return at once; ``.wait()`` gives the window.

        Between the two, a layer computes the outputs whose windows lie in this rank's own tile
        (:func:`windowed_apply`), so the exchange is hidden behind that work.
        """
        with timed("halo fetch"):
            return PendingFetch(self, plan)


class PendingFetch:
    """A fetch whose messages are in flight."""

    def __init__(self, arr: DistArray, plan: HaloPlan) -> None:
        self.arr, self.plan = arr, plan
        self.out: Any = None
        self.ex: _Exchanger | None = None
        self.incoming: list = []
        data = arr.data
        xp = get_array_module(data)
        B, C = data.shape[:2]
        win = plan.window
        if arr.full is not None:  # replicated: the window is a local slice, no messages
            H, W = arr.part.shape
            if win[0] >= 0 and win[2] >= 0 and win[1] <= H and win[3] <= W:
                self.out = arr.full[:, :, win[0]:win[1], win[2]:win[3]]
                return
            self.out = xp.zeros((B, C) + box_shape(win), dtype=data.dtype)
            inter = box_intersect(win, (0, H, 0, W))
            if inter is not None:
                self.out[(slice(None), slice(None)) + _rel(inter, win)] = \
                    arr.full[:, :, inter[0]:inter[1], inter[2]:inter[3]]
            return
        self.ex = ex = _Exchanger(xp, arr.w)
        if not box_empty(win):
            self.incoming = [(p, ex.recv((B, C) + box_shape(p.box), data.dtype, p.peer, _TAG_FETCH))
                             for p in plan.recvs]
        for p in plan.sends:
            ex.send(data[(slice(None), slice(None)) + _rel(p.box, arr.tile)], p.peer, _TAG_FETCH)
        self.out = xp.zeros((B, C) + box_shape(win), dtype=data.dtype)
        if plan.local is not None:
            self.out[(slice(None), slice(None)) + _rel(plan.local, win)] = \
                data[(slice(None), slice(None)) + _rel(plan.local, arr.tile)]

    def wait(self) -> Any:
        with timed("halo fetch"):
            return self._wait()

    def _wait(self) -> Any:
        if self.ex is not None:
            self.ex.wait()
            for p, buf in self.incoming:
                self.out[(slice(None), slice(None)) + _rel(p.box, self.plan.window)] = self.ex.to_xp(buf)
            self.ex, self.incoming = None, []
        return self.out


def _interior(out_tile: Box, in_tile: Box, kernel: int, stride: int) -> Box | None:
    """The outputs of ``out_tile`` whose input windows lie inside ``in_tile`` (need no halo)."""
    if box_empty(out_tile) or box_empty(in_tile):
        return None
    lo_y, hi_y = -(-in_tile[0] // stride), (in_tile[1] - kernel) // stride + 1
    lo_x, hi_x = -(-in_tile[2] // stride), (in_tile[3] - kernel) // stride + 1
    box = (max(out_tile[0], lo_y), min(out_tile[1], hi_y), max(out_tile[2], lo_x), min(out_tile[3], hi_x))
    return None if box_empty(box) else box


def _strips(outer: Box, inner: Box) -> list[Box]:
    """``outer`` minus ``inner`` as up to four rectangles (top, bottom, left, right)."""
    y0, y1, x0, x1 = outer
    iy0, iy1, ix0, ix1 = inner
    boxes = [(y0, iy0, x0, x1), (iy1, y1, x0, x1), (iy0, iy1, x0, ix0), (iy0, iy1, ix1, x1)]
    return [b for b in boxes if not box_empty(b)]


def overlap_halos(w: World, xp: Any) -> bool:
    """Whether to compute a tile's interior while its halo is in flight (``windowed_apply``).

    Splitting a tile costs extra, smaller kernel calls and an assembly copy. It pays where messages
    are slow (between nodes) or staged through host memory (GPUs); between the ranks of one CPU
    node, where MPI copies through shared memory, it measured 7% slower per update (2 ranks, 2
    cores), so it is off there. ``REPRO_OVERLAP_HALOS=1|0`` overrides (it must be the same on
    every rank). Collective on the first call (it asks whether the ranks share a node).
    """
    env = os.environ.get("REPRO_OVERLAP_HALOS")
    if env in ("0", "1"):
        return env == "1"
    if w.size == 1:
        return False
    return is_gpu(xp) or not w.single_node()


def windowed_apply(a: DistArray, plan: HaloPlan, out_tile: Box, kernel: int, stride: int,
                   fn: Any, spatial_axes: tuple[int, int] = (2, 3)) -> tuple[Any, Any]:
    """Apply a valid windowed op to this rank's output tile, hiding the halo exchange.

    ``fn(x_window, box)`` computes the outputs of the global output box ``box`` from its input
    window (``input_window(box, kernel, stride)``); its result has the box's rows and columns on
    ``spatial_axes``. The interior of the tile (windows inside this rank's own input tile) is
    computed while the halo is in flight, then the boundary strips. Returns (result, window):
    the fetched input window is what the backward pass needs.
    """
    overlap = overlap_halos(a.w, get_array_module(a.data))  # collective: before any message is posted
    pending = a.fetch_start(plan)
    inner = None if (a.full is not None or not plan.recvs or not overlap) else \
        _interior(out_tile, a.tile, kernel, stride)
    if inner is None:
        xw = pending.wait()
        return fn(xw, out_tile), xw
    y_in = fn(a.data[(slice(None), slice(None)) + _rel(input_window(inner, kernel, stride), a.tile)], inner)
    xw = pending.wait()
    ay, ax = spatial_axes
    shape = list(y_in.shape)
    shape[ay], shape[ax] = box_shape(out_tile)
    xp = get_array_module(y_in)
    out = xp.empty(shape, dtype=y_in.dtype)

    def put(box: Box, val: Any) -> None:
        idx = [slice(None)] * len(shape)
        idx[ay], idx[ax] = _rel(box, out_tile)
        out[tuple(idx)] = val

    put(inner, y_in)
    for box in _strips(out_tile, inner):
        put(box, fn(xw[(slice(None), slice(None)) + _rel(input_window(box, kernel, stride), plan.window)], box))
    return out, xw


def scatter_add(window_grad: Any, plan: HaloPlan, w: World) -> Any:
    """Adjoint of :meth:`DistArray.fetch`: sum every rank's window-shaped array into the owners' tiles.

    Returns this rank's tile ``(B, C, ty, tx)``: its own part of its window plus what each peer's
    window holds over this tile. Parts of a window outside the array's bounds are dropped.
    """
    with timed("halo scatter-add"):
        return _scatter_add(window_grad, plan, w)


def _scatter_add(window_grad: Any, plan: HaloPlan, w: World) -> Any:
    xp = get_array_module(window_grad)
    B, C = window_grad.shape[:2]
    tile = plan.tile
    out = xp.zeros((B, C) + box_shape(tile), dtype=window_grad.dtype)
    ex = _Exchanger(xp, w)
    incoming = [(p, ex.recv((B, C) + box_shape(p.box), window_grad.dtype, p.peer, _TAG_ADJOINT)) for p in plan.sends]
    win = plan.window
    for p in plan.recvs:  # what I fetched from p.peer goes back to it
        ex.send(window_grad[(slice(None), slice(None)) + _rel(p.box, win)], p.peer, _TAG_ADJOINT)
    if plan.local is not None:
        out[(slice(None), slice(None)) + _rel(plan.local, tile)] += \
            window_grad[(slice(None), slice(None)) + _rel(plan.local, win)]
    ex.wait()
    # Add peers' contributions in rank order so the sum does not depend on message arrival.
    for p, buf in sorted(incoming, key=lambda pb: pb[0].peer):
        out[(slice(None), slice(None)) + _rel(p.box, tile)] += ex.to_xp(buf)
    return out


def gather(arr: DistArray, root: int | None = 0) -> np.ndarray | None:
    """The whole global array as NumPy on ``root`` (all ranks if root is None); for I/O and tests."""
    w = arr.w
    B, C = arr.data.shape[:2]
    H, W = arr.part.shape
    pieces = w.comm.allgather(to_numpy(arr.data)) if root is None else w.comm.gather(to_numpy(arr.data), root=root)
    if pieces is None:
        return None
    out = np.zeros((B, C, H, W), dtype=pieces[0].dtype)
    for r, piece in enumerate(pieces):
        y0, y1, x0, x1 = arr.part.tile(r)
        out[:, :, y0:y1, x0:x1] = piece
    return out
