"""The Le et al. network: stages of LC filtering -> L2 pooling -> LCN, trained with RICA.

Long because checkpoint loading, feature extraction and the unit gradient all need the same
tile-by-tile view of the network; splitting them would spread one layout over several files.

Shapes (one rank's tiles; ``ty, tx`` = its tile of that layer, ``wy, wx`` = the window it reads):
    a   (B, C, ty, tx)   stage input (images, or the previous stage's LCN output)
    xw  (B, C, wy, wx)   input window the filter tile reads (fetched halo included)
    y   (B, F, ty, tx)   filter responses  W1^T x       (one dense GEMM per location)
    p   (B, F, ty, tx)   L2 pooling  sqrt(eps + H y^2)  (also the sparsity term of RICA)
    z   (B, F, ty, tx)   LCN output = next stage's input

Per-stage objective (RICA with L2 pooling, mean over the B images of a minibatch):
    R = ( ||W2 (W1^T x) - x||^2 + lambda * sum_j sqrt(eps + H_j (W1^T x)^2) ) / B
where ``W2 y`` is the transposed connectivity (``lc_backward_data`` with the decoding weights).
The joint fine-tuning objective is the sum of every stage's R, each stage's input depending on
the stages below it: the update Coates et al. timed.

Nothing here depends on the rank count: parameters are drawn per output location from the seed,
and every exchange goes through a :class:`~repro.model.layout.Layout` plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repro.engine import kernels as K
from repro.engine.backend import get_array_module, to_numpy
from repro.engine.comm import World
from repro.engine.distarray import DistArray, gather
from repro.engine.timing import TIMER
from repro.model import checkpoint as ckpt
from repro.model.config import NetworkConfig
from repro.model.layers import Stage, StageCache, check_sublayer
from repro.model.layout import Layout
from repro.model.optim import Optimizer


def param_names(cfg: NetworkConfig) -> list[str]:
    """``stageN.W1`` (encoding) and ``stageN.W2`` (decoding; absent when the config ties them)."""
    kinds = ("W1",) if cfg.rica.tied else ("W1", "W2")
    return [f"stage{i}.{w}" for i in range(len(cfg.stages)) for w in kinds]


def _split(name: str) -> tuple[int, str]:
    """``"stage2.W1"`` -> (2, "W1")."""
    stage, which = name.split(".")[:2]
    return int(stage[len("stage"):]), which


def init_tile(cfg: NetworkConfig, stage: int, which: str, tile: tuple[int, int, int, int], seed: int,
              dtype: Any = np.float32) -> np.ndarray:
    """The tile ``[y0:y1, x0:x1]`` of a weight, drawn location by location from (seed, stage, which, oy, ox).

    Each location's filters come from their own random stream, so any tiling gives the same
    numbers: distributed == serial from step 0, and a 6-rank run can be resumed on 4 ranks.
    Encoding filters are unit-norm; decoding filters start at a tenth of that scale.
    """
    _, _, F, C, k, _ = cfg.weight_shape(stage)
    y0, y1, x0, x1 = tile
    out = np.empty((y1 - y0, x1 - x0, F, C, k, k), dtype=dtype)  # no full-size float64 copy
    kind = {"W1": 1, "W2": 2}[which]
    for oy in range(y0, y1):
        for ox in range(x0, x1):
            w = np.random.default_rng([seed, stage, kind, oy, ox]).standard_normal((F, C, k, k))
            if which == "W1":
                w /= np.sqrt((w ** 2).sum(axis=(1, 2, 3), keepdims=True))
            else:
                w *= 0.1 / np.sqrt(C * k * k)
            out[oy - y0, ox - x0] = w
    return out


def standardize(x: Any) -> Any:
    """Per image: subtract the mean, divide by the standard deviation (floored for flat images)."""
    xp = get_array_module(x)
    axes = tuple(range(1, x.ndim))
    x = x - x.mean(axis=axes, keepdims=True)
    return x / xp.maximum(x.std(axis=axes, keepdims=True), 1e-3)


def preprocess(x: Any, cfg: NetworkConfig) -> Any:
    """What the first stage sees of raw images (B, C, H, W): standardised per image, then, if the
    config asks, locally contrast-normalised at unchanged size. Baselines that compete with the
    network's neurons see the same."""
    x = standardize(x)
    if cfg.input_lcn > 1:
        x = K.lcn_same_forward(x, cfg.input_lcn, cfg.input_lcn_sigma, cfg.input_lcn_eps)
    return x


def normalize_filters(W: Any) -> Any:
    """Project every neuron's filter (over c, ky, kx) to unit norm, in place. Keeps RICA from
    shrinking W1 to nothing while W2 grows (the sparsity term is not scale invariant)."""
    xp = get_array_module(W)
    if not W.flags.c_contiguous:  # a reshape would copy: normalise through broadcasting instead
        W /= xp.maximum(xp.sqrt((W * W).sum(axis=(3, 4, 5), keepdims=True)), 1e-12)
        return W
    flat = W.reshape(W.shape[0] * W.shape[1] * W.shape[2], -1)  # one row per neuron (a view)
    norm = xp.sqrt(xp.einsum("ij,ij->i", flat, flat))[:, None]
    flat /= xp.maximum(norm, 1e-12)
    return W


@dataclass
class Network:
    """One rank's share of the network: its tiles of every weight, and the plan that ties them."""

    cfg: NetworkConfig
    layout: Layout
    params: dict[str, Any]  # name -> tile (xp array)
    xp: Any  # the array module (NumPy or CuPy): always given, so nothing falls back to the CPU unnoticed
    w: World  # the ranks that share this network: always given, never "the whole world" by default
    stages: list[Stage] = field(init=False)
    _scratch: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        r = self.cfg.rica
        self.stages = [Stage(i, s, L, r.lam, r.eps, self.w, r.reconstruct)
                       for i, (s, L) in enumerate(zip(self.cfg.stages, self.layout.stages))]

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: NetworkConfig, seed: int, xp: Any, w: World,
               dtype: Any = np.float32, layout: Layout | None = None) -> "Network":
        layout = layout or Layout.build(cfg, w.rank, w.size)
        params = {}
        for name in param_names(cfg):
            stage, which = _split(name)
            tile = layout.stages[stage].part_f.tile(w.rank)
            params[name] = xp.asarray(init_tile(cfg, stage, which, tile, seed, dtype))
        return cls(cfg, layout, params, xp, w)

    def weight_tile(self, name: str) -> tuple[int, int, int, int]:
        return self.layout.stages[_split(name)[0]].part_f.tile(self.w.rank)

    def _decoder_scratch(self, i: int) -> Any:
        """A W1-shaped view of one buffer, the size of the largest stage's W1, for tied decoders'
        gradients (the memory planner counts one such stage gradient)."""
        W1 = self.params[f"stage{i}.W1"]
        if self._scratch is None:
            n = max(int(p.size) for name, p in self.params.items() if name.endswith(".W1"))
            self._scratch = self.xp.empty(n, dtype=W1.dtype)
        return self._scratch[: W1.size].reshape(W1.shape)

    def decoder(self, i: int) -> Any:
        """Stage i's decoding weights: W2, or W1 itself when the config ties them."""
        return self.params[f"stage{i}.W1" if self.cfg.rica.tied else f"stage{i}.W2"]

    @property
    def dtype(self) -> Any:
        return next(iter(self.params.values())).dtype

    def input_array(self, images: Any) -> DistArray:
        """The minibatch every rank of the group holds, seen as the first stage's input.

        Each image is standardised (zero mean, unit variance over its pixels) so that the
        objective's scale does not depend on a dataset's brightness or contrast, then contrast
        normalised locally when the config asks (:func:`preprocess`).
        """
        x = preprocess(self.xp.asarray(images, dtype=self.dtype), self.cfg)
        return DistArray.from_replicated(x, self.layout.stages[0].part_in, self.w)

    # ---- forward ------------------------------------------------------------------------------
    def stage_forward(self, i: int, a: DistArray) -> StageCache:
        with TIMER.scope(f"stage{i}/fwd"):
            return self.stages[i].forward(a, self.params[f"stage{i}.W1"])

    def forward(self, images: Any, upto: int | None = None) -> list[StageCache]:
        """All stages (or the first ``upto``), keeping what backward needs."""
        return self.forward_from(self.input_array(images), upto)

    def forward_from(self, a: DistArray, upto: int | None = None) -> list[StageCache]:
        """The stages from an already prepared first-stage input (see :meth:`input_array`)."""
        caches = []
        for i in range(len(self.cfg.stages) if upto is None else upto):
            c = self.stage_forward(i, a)
            caches.append(c)
            a = DistArray(c.z, self.layout.stages[i].part_n, self.w)
        return caches

    def stage_input(self, images: Any, i: int) -> DistArray:
        """Stage i's input: images through the (fixed) stages below it."""
        if i == 0:
            return self.input_array(images)
        return DistArray(self.forward(images, upto=i)[-1].z, self.layout.stages[i - 1].part_n, self.w)

    # ---- RICA objective and gradients ----------------------------------------------------------
    def stage_loss_and_grads(self, i: int, c: StageCache, dz: Any = None, need_input_grad: bool = False,
                             out: dict[str, Any] | None = None) -> tuple[float, dict[str, Any], Any]:
        """Stage i's RICA loss (summed over ranks), its weight gradients, and optionally d(loss)/d(input).

        ``dz`` is the gradient of later stages' losses with respect to this stage's LCN output
        (joint fine-tuning); its contribution flows into W1 and into the input gradient.
        ``out``: gradient arrays by parameter name (an earlier call's, e.g. the previous step's);
        the gradients of the names it holds are written into them instead of fresh arrays.
        """
        out = out or {}
        dW1_out = out.get(f"stage{i}.W1")
        if self.cfg.rica.tied:  # the decoder's gradient lives until it is added to W1's
            dW2_out = self._decoder_scratch(i) if dW1_out is not None else None
        else:
            dW2_out = out.get(f"stage{i}.W2")
        with TIMER.scope(f"stage{i}/bwd"):
            loss, dW1, dW2, da = self.stages[i].rica(c, self.params[f"stage{i}.W1"], self.decoder(i), dz,
                                                     need_input_grad, dW1_out, dW2_out)
        if self.cfg.rica.tied:
            dW1 += dW2  # in place: no third weight-sized array
            return loss, {f"stage{i}.W1": dW1}, da
        return loss, {f"stage{i}.W1": dW1, f"stage{i}.W2": dW2}, da

    def layer_loss_and_grads(self, images: Any, i: int, out: dict[str, Any] | None = None
                             ) -> tuple[float, dict[str, Any]]:
        """Greedy layer-wise step: stage i's RICA on its input, the stages below held fixed.
        ``out``: as in :meth:`stage_loss_and_grads`."""
        c = self.stage_forward(i, self.stage_input(images, i))
        loss, grads, _ = self.stage_loss_and_grads(i, c, out=out)
        return loss, grads

    def finetune_loss_and_grads(self, images: Any, out: dict[str, Any] | None = None
                                ) -> tuple[float, dict[str, Any]]:
        """Joint objective: sum of every stage's RICA, gradients through all stages at once.

        ``out``: the gradients of an earlier call, written over instead of allocating new ones (a
        training loop passes the previous step's; on CPUs fresh weight-sized arrays cost their page
        faults every step)."""
        caches = self.forward(images)
        total, grads, dz = 0.0, {}, None
        for i in reversed(range(len(caches))):
            loss, g, da = self.stage_loss_and_grads(i, caches[i], dz, need_input_grad=i > 0, out=out)
            total += loss
            grads.update(g)
            dz = da
        return total, grads

    # ---- features for evaluation ----------------------------------------------------------------
    def features(self, images: Any, stage: int, sublayer: str = "pool") -> Any:
        """This rank's tile of a sublayer's activations (``filter``, ``pool`` or ``lcn``) for a batch."""
        return self.forward(images, upto=stage + 1)[-1].sublayer(sublayer)


def apply_update(net: Network, opt: Optimizer, grads: dict[str, Any]) -> None:
    """One optimiser step on this rank's tiles, then the unit-norm projection of encoding filters."""
    opt.step(net.params, grads)
    rica = net.cfg.rica
    for name in grads:
        if (name.endswith(".W1") and rica.normalize_encoder) or (name.endswith(".W2") and rica.normalize_decoder):
            normalize_filters(net.params[name])


def save_checkpoint(net: Network, opt: Optimizer | None, directory: Any, step: int,
                    extra: dict[str, Any] | None = None, keep: int | None = None) -> Any:
    """Collective: weights and optimiser state, each rank its tiles."""
    tensors = dict(net.params)
    tiles = {n: net.weight_tile(n) for n in net.params}
    if opt is not None:
        for n in net.params:
            for sn in opt.state_names(n):
                if sn in opt.state:
                    tensors[sn] = opt.state[sn]
                    tiles[sn] = tiles[n]
    extra = dict(extra or {})
    if opt is not None:
        extra.setdefault("optimizer", {"kind": opt.kind, "lr": opt.lr, "momentum": opt.momentum})
    return ckpt.save(directory, step, net.cfg, tensors, tiles, net.w, extra, keep=keep)


def load_checkpoint(path: Any, cfg: NetworkConfig | None, xp: Any, w: World,
                    opt: Optimizer | None = None) -> tuple[Network, dict[str, Any]]:
    """A network (and optimiser state, if ``opt`` is given) from a checkpoint written on any rank count;
    ``cfg`` None takes the checkpoint's own config."""
    cfg = cfg or ckpt.config_of(path)
    ckpt.check_compatible(path, cfg)
    layout = Layout.build(cfg, w.rank, w.size)
    wanted = {n: layout.stages[_split(n)[0]].part_f.tile(w.rank) for n in param_names(cfg)}
    _, manifest = ckpt.read_manifest(path)
    if opt is not None:
        for n in list(wanted):
            for sn in opt.state_names(n):
                if sn in manifest["shapes"]:
                    wanted[sn] = wanted[n]
    arrays, manifest = ckpt.load_tiles(path, wanted)
    params = {n: xp.asarray(arrays[n]) for n in param_names(cfg)}
    if opt is not None:
        opt.state = {n: xp.asarray(a) for n, a in arrays.items() if n not in params}
    return Network(cfg, layout, params, xp, w), manifest


def gather_tiles(net: Network, tiles: dict[str, Any], root: int | None = 0) -> dict[str, np.ndarray] | None:
    """Whole weight-shaped tensors (NumPy) from every rank's tiles: for export, reports and tests."""
    w = net.w
    host = {n: to_numpy(t) for n, t in tiles.items()}
    boxes = {n: net.weight_tile(n.split(".")[0] + ".W1") for n in tiles}
    mine = (host, boxes)
    allp = w.comm.allgather(mine) if root is None else w.comm.gather(mine, root=root)
    if allp is None:
        return None
    out = {}
    for n in tiles:
        shape = net.cfg.weight_shape(_split(n)[0])
        full = np.zeros(shape, dtype=host[n].dtype)
        for h, b in allp:
            y0, y1, x0, x1 = b[n]
            full[y0:y1, x0:x1] = h[n]
        out[n] = full
    return out


def gather_activation(net: Network, tile: Any, part: Any, root: int | None = 0) -> np.ndarray | None:
    """A whole (B, F, H, W) activation from every rank's tile of partition ``part``."""
    return gather(DistArray(tile, part, net.w), root)


def sublayer_partition(net: Network, stage: int, sublayer: str) -> Any:
    L = net.layout.stages[stage]
    return {"filter": L.part_f, "pool": L.part_p, "lcn": L.part_n}[check_sublayer(sublayer)]


def unit_gradient(net: Network, x_std: Any, stage: int, sublayer: str, unit: tuple[int, int, int]
                  ) -> tuple[float, Any]:
    """One neuron's activation and its gradient with respect to the (already standardised) input.

    ``unit`` = (map, row, col) in the sublayer's global grid; ``x_std`` is the (B, C, H, W) input
    after :func:`standardize`, replicated on every rank. Returns the activations summed over the
    batch and d(that sum)/d(x_std), the same full array on every rank (the optimal stimulus of
    Le et al. is a projected gradient ascent on this).
    """
    xp = net.xp
    x = xp.asarray(x_std, dtype=net.dtype)
    cfg = net.cfg
    a0 = K.lcn_same_forward(x, cfg.input_lcn, cfg.input_lcn_sigma, cfg.input_lcn_eps) if cfg.input_lcn > 1 else x
    caches = net.forward_from(DistArray.from_replicated(a0, net.layout.stages[0].part_in, net.w), stage + 1)
    f, gy, gx = unit
    part = sublayer_partition(net, stage, sublayer)
    y0, y1, x0, x1 = part.tile(net.w.rank)
    act = caches[-1].sublayer(sublayer)
    seed = xp.zeros(act.shape, dtype=act.dtype)
    value = 0.0
    if y0 <= gy < y1 and x0 <= gx < x1:
        seed[:, f, gy - y0, gx - x0] = 1.0
        value = float(act[:, f, gy - y0, gx - x0].sum())
    value = net.w.allreduce_sum(value)
    grad, level = seed, sublayer
    for i in reversed(range(stage + 1)):
        st, c = net.stages[i], caches[i]
        if level == "lcn":
            grad, level = st.lcn.backward(grad, c.pw), "pool"
        if level == "pool":
            grad = st.pool.backward(grad, c.yw, c.p)
        grad, _ = st.filter.backward(grad, c.xw, net.params[f"stage{i}.W1"], need_weight_grad=False)
        level = "lcn"
    full = xp.asarray(gather(DistArray(grad, net.layout.stages[0].part_in, net.w), root=None))
    if cfg.input_lcn > 1:  # back through the input's contrast normalisation, to the standardised image
        full = K.lcn_same_backward(full, x, cfg.input_lcn, cfg.input_lcn_sigma, cfg.input_lcn_eps)
    return value, full


def compute_features(net: Network, images: Any, stage: int, sublayer: str = "pool", batch: int = 256) -> np.ndarray:
    """Activations of every neuron of one sublayer for a set of images: (N, maps*H*W) on every rank.

    Neuron ``j`` is flat index ``(map, row, col)`` of the sublayer's (maps, H, W) grid, so the
    same index means the same neuron on any rank count.
    """
    part = sublayer_partition(net, stage, sublayer)
    out = []
    for lo in range(0, len(images), batch):
        tile = net.features(images[lo:lo + batch], stage, sublayer)
        full = gather(DistArray(tile, part, net.w), root=None)
        out.append(full.reshape(full.shape[0], -1))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def local_index(net: Network, stage: int, sublayer: str = "pool") -> np.ndarray:
    """(J_local,) int64: flat (map, row, col) indices of this rank's tile of a sublayer, in tile order.

    The same definition as :func:`compute_features`; the union over ranks is every neuron exactly
    once (an empty tile gives an empty array). Increasing, so a local argmax's first hit is the
    lowest global index among local ties.
    """
    part = sublayer_partition(net, stage, sublayer)
    H, W = part.shape
    y0, y1, x0, x1 = part.tile(net.w.rank)
    maps = net.cfg.stages[stage].maps
    m, r, c = np.meshgrid(np.arange(maps), np.arange(y0, y1), np.arange(x0, x1), indexing="ij")
    return ((m * H + r) * W + c).reshape(-1).astype(np.int64)


def local_features(net: Network, images: Any, stage: int, sublayer: str = "pool", batch: int = 256
                   ) -> tuple[np.ndarray, np.ndarray]:
    """This rank's neurons only: ``(F_local (N, J_local) NumPy, global_index (J_local,) int64)``.

    Collective (every rank runs the forward pass), but nothing is gathered: column ``k`` of
    ``F_local`` is column ``global_index[k]`` of :func:`compute_features`, bit for bit.
    """
    idx = local_index(net, stage, sublayer)
    out = []
    for lo in range(0, len(images), batch):
        tile = to_numpy(net.features(images[lo:lo + batch], stage, sublayer))
        out.append(tile.reshape(tile.shape[0], len(idx)))
    F = np.concatenate(out) if out else np.zeros((0, len(idx)), np.float32)
    return F, idx


def neuron_owner(net: Network, stage: int, sublayer: str, index: int) -> tuple[int, int]:
    """(rank that holds flat neuron ``index`` of a sublayer, its column in that rank's ``local_features``)."""
    part = sublayer_partition(net, stage, sublayer)
    H, W = part.shape
    maps = net.cfg.stages[stage].maps
    m, r, c = (int(v) for v in np.unravel_index(int(index), (maps, H, W)))
    for rank, (y0, y1, x0, x1) in enumerate(part.tiles):
        if y0 <= r < y1 and x0 <= c < x1:
            return rank, (m * (y1 - y0) + (r - y0)) * (x1 - x0) + (c - x0)
    raise ValueError(f"neuron {index} is outside stage {stage} {sublayer}")


def neuron_features(net: Network, images: Any, stage: int, sublayer: str, index: int, batch: int = 256
                    ) -> np.ndarray:
    """(N,) activations of ONE neuron, the same on every rank: its owner computes it and broadcasts
    N numbers (equal to ``compute_features(...)[:, index]``, without gathering the matrix)."""
    owner, col = neuron_owner(net, stage, sublayer, index)
    parts = []
    for lo in range(0, len(images), batch):  # collective forward; only the owner keeps a column
        tile = net.features(images[lo:lo + batch], stage, sublayer)
        if net.w.rank == owner:
            parts.append(np.array(to_numpy(tile.reshape(tile.shape[0], -1)[:, col])))
    mine = (np.concatenate(parts) if parts else np.zeros(0, np.float32)) if net.w.rank == owner else None
    return net.w.bcast(mine, root=owner)
