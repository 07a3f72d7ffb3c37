"""Network shapes from ``configs/*.toml``: small dataclasses, validated once, parsed nowhere else."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from repro.errors import ReproError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


# The defaults below are what a TOML that omits a key gets: the paper's stage shapes, and the
# objective and training of the shipped configs (tied RICA; AdaGrad as the default config faces32),
# which are known to train; untied decoders with unit-norm encoders are degenerate.
@dataclass(frozen=True)
class StageConfig:
    """One stage = locally connected filtering -> L2 pooling -> local contrast normalisation."""

    maps: int = 8  # neurons (feature maps) per output location: one dense GEMM block
    filter: int = 18  # receptive field (square), pixels of the stage's input
    stride: int = 1
    pool: int = 5  # L2 pooling neighbourhood (per map)
    pool_stride: int = 1
    lcn: int = 5  # LCN neighbourhood (valid: shrinks the map by lcn - 1); 0 = no LCN (the paper's ablation)
    lcn_sigma: float = 1.0
    lcn_eps: float = 1.0  # as every shipped config: a tiny eps blows flat regions up to unit contrast

    @property
    def lcn_window(self) -> int:
        """The LCN's neighbourhood as shapes and halos see it (no LCN behaves as a 1 x 1 identity)."""
        return max(1, self.lcn)


@dataclass(frozen=True)
class RicaConfig:
    """Per-layer objective: ||W2 W1^T x - x||^2 + lambda * sum sqrt(eps + H (W1^T x)^2), mean over images."""

    lam: float = 0.1
    eps: float = 1e-2
    normalize_encoder: bool = False  # project each encoding filter to unit norm after every update
    normalize_decoder: bool = False  # the same for each decoding filter (W2)
    tied: bool = True  # decode with the encoder's transpose (W2 = W1, the RICA of Le et al. 2011)
    # "image": the decoders of all locations add up to one reconstruction of the whole input (the
    # transposed connectivity of Le et al. 2012); "window": every receptive field reconstructs its own
    # input window (Le et al. 2011's RICA on patches, at every location). See results/reference/face-neuron.md.
    reconstruct: str = "image"


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adagrad"  # "sgd" (with momentum) or "adagrad"
    lr: float = 0.05
    momentum: float = 0.9
    batch: int = 64
    layer_steps: int = 1000  # greedy layer-wise steps per stage
    finetune_steps: int = 0  # joint steps of all stages afterwards
    checkpoint_every: int = 500
    seed: int = 0


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    input_size: tuple[int, int]
    channels: int
    stages: tuple[StageConfig, ...]
    rica: RicaConfig = field(default_factory=RicaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: str = "mini"  # dataset (manifest name) the defaults train on
    notes: str = ""
    # local contrast normalisation of the input image (after per-image standardisation), at unchanged
    # size; 0 = none. It keeps local luminance and contrast from dominating what stage 0 learns.
    input_lcn: int = 0
    input_lcn_sigma: float = 2.0
    input_lcn_eps: float = 0.1

    # ---- shapes -----------------------------------------------------------------------------
    def stage_shapes(self) -> list[dict[str, tuple[int, int]]]:
        """Per stage, the spatial size of its input, filter output, pool output and LCN output."""
        out = []
        h, w = self.input_size
        for i, s in enumerate(self.stages):
            fy, fx = _valid(h, s.filter, s.stride), _valid(w, s.filter, s.stride)
            py, px = _valid(fy, s.pool, s.pool_stride), _valid(fx, s.pool, s.pool_stride)
            ny, nx = _valid(py, s.lcn_window, 1), _valid(px, s.lcn_window, 1)
            out.append({"input": (h, w), "filter": (fy, fx), "pool": (py, px), "lcn": (ny, nx)})
            h, w = ny, nx
        return out

    def stage_channels(self, i: int) -> int:
        return self.channels if i == 0 else self.stages[i - 1].maps

    def weight_shape(self, i: int) -> tuple[int, int, int, int, int, int]:
        s = self.stages[i]
        fy, fx = self.stage_shapes()[i]["filter"]
        return (fy, fx, s.maps, self.stage_channels(i), s.filter, s.filter)

    def parameter_counts(self) -> list[int]:
        """Per stage, the encoding weights W1 (the decoding W2 has as many again)."""
        return [math.prod(self.weight_shape(i)) for i in range(len(self.stages))]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    def as_json(self) -> dict[str, Any]:
        """:meth:`to_dict` as it reads back from a JSON file (tuples as lists): what a run's
        ``config.json`` or an evaluation's ``config`` is compared with."""
        return json.loads(json.dumps(self.to_dict()))

    def check_image_shape(self, shape: tuple[int, ...], where: str) -> None:
        """Stored images (H, W) or (H, W, C) must be this network's input: else another config's data."""
        h, w = shape[:2]
        c = shape[2] if len(shape) == 3 else 1
        if (h, w) != tuple(self.input_size) or c != self.channels:
            raise ReproError(f"{where}: images are {h}x{w}x{c}, config {self.name!r} wants "
                             f"{self.input_size[0]}x{self.input_size[1]}x{self.channels}; "
                             f"`repro data prepare NAME --for-config {self.name}` makes a store of this size")

    def with_train(self, **kw: Any) -> "NetworkConfig":
        return replace(self, train=replace(self.train, **kw))


def _valid(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1 if n >= k else 0


def validate(cfg: NetworkConfig, where: str) -> NetworkConfig:
    """Impossible shapes are a one-line error naming the config."""
    if cfg.channels < 1 or min(cfg.input_size) < 1:
        raise ReproError(f"{where}: input size and channels must be positive")
    if not cfg.stages:
        raise ReproError(f"{where}: no stages")
    h, w = cfg.input_size
    for i, s in enumerate(cfg.stages):
        for name in ("maps", "filter", "stride", "pool", "pool_stride", "lcn"):
            least = 0 if name == "lcn" else 1
            if getattr(s, name) < least:
                raise ReproError(f"{where}: stage {i}: {name} must be >= {least}, got {getattr(s, name)}")
        if s.lcn % 2 == 0 and s.lcn != 0:
            raise ReproError(f"{where}: stage {i}: lcn neighbourhood must be odd (or 0: no LCN), got {s.lcn}")
        if s.filter > min(h, w):
            raise ReproError(f"{where}: stage {i}: filter window {s.filter} is larger than its input {h}x{w}")
        fy, fx = _valid(h, s.filter, s.stride), _valid(w, s.filter, s.stride)
        if s.pool > min(fy, fx):
            raise ReproError(f"{where}: stage {i}: pooling window {s.pool} is larger than its input {fy}x{fx}")
        py, px = _valid(fy, s.pool, s.pool_stride), _valid(fx, s.pool, s.pool_stride)
        if s.lcn > min(py, px):
            raise ReproError(f"{where}: stage {i}: LCN window {s.lcn} is larger than its input {py}x{px}")
        h, w = _valid(py, s.lcn_window, 1), _valid(px, s.lcn_window, 1)
        for name in ("lcn_sigma", "lcn_eps"):
            v = getattr(s, name)
            if not (math.isfinite(v) and v > 0):
                raise ReproError(f"{where}: stage {i}: {name} must be a positive number, got {v}")
    t = cfg.train
    if t.optimizer not in ("sgd", "adagrad"):
        raise ReproError(f"{where}: train.optimizer must be 'sgd' or 'adagrad', got {t.optimizer!r}")
    if not (math.isfinite(t.lr) and t.lr > 0):
        raise ReproError(f"{where}: train.lr must be a positive finite number, got {t.lr}")
    if not (math.isfinite(t.momentum) and 0 <= t.momentum < 1):
        raise ReproError(f"{where}: train.momentum must be in [0, 1), got {t.momentum}")
    for name, least in (("batch", 1), ("checkpoint_every", 1), ("layer_steps", 0), ("finetune_steps", 0), ("seed", 0)):
        if getattr(t, name) < least:
            raise ReproError(f"{where}: train.{name} must be >= {least}, got {getattr(t, name)}")
    if not (math.isfinite(cfg.rica.lam) and cfg.rica.lam >= 0) or not (math.isfinite(cfg.rica.eps) and cfg.rica.eps > 0):
        raise ReproError(f"{where}: rica.lambda must be >= 0 and rica.eps > 0, got {cfg.rica.lam} and {cfg.rica.eps}")
    if cfg.rica.reconstruct not in ("image", "window"):
        raise ReproError(f"{where}: rica.reconstruct must be 'image' or 'window', got {cfg.rica.reconstruct!r}")
    if cfg.input_lcn:
        if cfg.input_lcn < 0 or cfg.input_lcn % 2 == 0 or cfg.input_lcn // 2 >= min(cfg.input_size):
            raise ReproError(f"{where}: input.lcn must be 0 (none) or an odd size smaller than twice the input, "
                             f"got {cfg.input_lcn}")
        if cfg.input_lcn_sigma <= 0 or cfg.input_lcn_eps <= 0:
            raise ReproError(f"{where}: input.lcn_sigma and input.lcn_eps must be positive")
    return cfg


_STAGE_KEYS = set(StageConfig.__dataclass_fields__)
_RICA_KEYS = {"lambda": "lam", "eps": "eps", "normalize_encoder": "normalize_encoder",
              "normalize_decoder": "normalize_decoder", "tied": "tied", "reconstruct": "reconstruct"}
_INPUT_KEYS = {"size", "channels", "lcn", "lcn_sigma", "lcn_eps"}
_TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)


def _check_keys(table: dict, allowed: set, where: str, what: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ReproError(f"{where}: unknown key(s) in {what}: {', '.join(sorted(unknown))}")


INT, NUMBER, BOOL, STR = "an integer", "a number", "true or false", "a string"
_TYPES = {
    "stage": {"maps": INT, "filter": INT, "stride": INT, "pool": INT, "pool_stride": INT, "lcn": INT,
              "lcn_sigma": NUMBER, "lcn_eps": NUMBER, "count": INT},
    "rica": {"lambda": NUMBER, "eps": NUMBER, "normalize_encoder": BOOL, "normalize_decoder": BOOL, "tied": BOOL,
             "reconstruct": STR},
    "train": {"optimizer": STR, "lr": NUMBER, "momentum": NUMBER, "batch": INT, "layer_steps": INT,
              "finetune_steps": INT, "checkpoint_every": INT, "seed": INT},
    "input": {"channels": INT, "lcn": INT, "lcn_sigma": NUMBER, "lcn_eps": NUMBER},
    "top": {"name": STR, "data": STR, "notes": STR},
}


def _is(v: Any, kind: str) -> bool:
    if kind == BOOL:
        return isinstance(v, bool)
    if kind == STR:
        return isinstance(v, str)
    if isinstance(v, bool):  # TOML's true is not the integer 1 here
        return False
    return isinstance(v, int) if kind == INT else isinstance(v, (int, float))


def _check_types(table: dict, kinds: dict[str, str], where: str, what: str) -> None:
    """Every value of the type its field needs: no silent coercion ("no" is not false, 1.5 is no seed)."""
    for k, v in table.items():
        kind = kinds.get(k)
        if kind is not None and not _is(v, kind):
            raise ReproError(f"{where}: {what}.{k} must be {kind}, got {v!r}")


def from_dict(d: dict[str, Any], where: str = "<config>") -> NetworkConfig:
    try:
        _check_keys(d, {"name", "input", "stage", "stages", "rica", "train", "data", "notes"}, where, "the top level")
        _check_types(d, _TYPES["top"], where, "top level")
        inp = d["input"]
        if not isinstance(inp, dict):
            raise ReproError(f"{where}: [input] must be a table")
        _check_keys(inp, _INPUT_KEYS, where, "[input]")
        _check_types(inp, _TYPES["input"], where, "input")
        size = inp["size"]
        if _is(size, INT):
            size = (size, size)
        elif isinstance(size, list) and len(size) == 2 and all(_is(v, INT) for v in size):
            size = (size[0], size[1])
        else:
            raise ReproError(f"{where}: input.size must be an integer or [height, width] integers, got {size!r}")
        default = d.get("stage", {})
        _check_keys(default, _STAGE_KEYS | {"count"}, where, "[stage]")
        _check_types(default, _TYPES["stage"], where, "stage")
        count = int(default.get("count", 0))
        default = {k: v for k, v in default.items() if k != "count"}
        per = d.get("stages", [])
        if not per:
            per = [{}] * count
        stages = []
        for i, s in enumerate(per):
            _check_keys(s, _STAGE_KEYS, where, f"[[stages]] #{i}")
            _check_types(s, _TYPES["stage"], where, f"stages[{i}]")
            stages.append(StageConfig(**{**default, **s}))
        rica_t = d.get("rica", {})
        _check_keys(rica_t, set(_RICA_KEYS), where, "[rica]")
        _check_types(rica_t, _TYPES["rica"], where, "rica")
        rica = RicaConfig(**{_RICA_KEYS[k]: v for k, v in rica_t.items()})
        train_t = d.get("train", {})
        _check_keys(train_t, _TRAIN_KEYS, where, "[train]")
        _check_types(train_t, _TYPES["train"], where, "train")
        train = TrainConfig(**train_t)
        cfg = NetworkConfig(name=d["name"], input_size=size, channels=inp.get("channels", 1),
                            stages=tuple(stages), rica=rica, train=train, data=str(d.get("data", "mini")),
                            notes=str(d.get("notes", "")), input_lcn=int(inp.get("lcn", 0)),
                            input_lcn_sigma=float(inp.get("lcn_sigma", 2.0)),
                            input_lcn_eps=float(inp.get("lcn_eps", 0.1)))
    except KeyError as exc:
        raise ReproError(f"{where}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ReproError(f"{where}: {exc}") from None
    return validate(cfg, where)


def from_saved(d: dict[str, Any], where: str = "<saved config>") -> NetworkConfig:
    """The config back from :meth:`NetworkConfig.to_dict` (a run's config.json, a checkpoint's manifest)."""
    try:
        rica = dict(d["rica"])
        rica["lambda"] = rica.pop("lam")
        table = {"name": d["name"], "data": d.get("data", "mini"), "notes": d.get("notes", ""),
                 "input": {"size": list(d["input_size"]), "channels": d["channels"],
                           "lcn": d.get("input_lcn", 0), "lcn_sigma": d.get("input_lcn_sigma", 2.0),
                           "lcn_eps": d.get("input_lcn_eps", 0.1)},
                 "stages": [dict(s) for s in d["stages"]], "rica": rica, "train": dict(d["train"])}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ReproError(f"{where}: not a saved repro config ({exc!r})") from None
    return from_dict(table, where)


def load_saved(path: str | os.PathLike) -> NetworkConfig:
    """A run's ``config.json``."""
    p = Path(path)
    try:
        return from_saved(json.loads(p.read_text()), str(p))
    except FileNotFoundError:
        raise ReproError(f"{p}: missing; is {p.parent} a `repro train` run folder?") from None
    except (OSError, ValueError) as exc:
        raise ReproError(f"{p}: unreadable ({exc})") from None


def builtin_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(name_or_path: str) -> NetworkConfig:
    """A built-in config by name (``mini``, ``le2012``) or a path to a TOML file."""
    p = Path(name_or_path)
    if not (p.suffix == ".toml" or p.exists()):
        p = CONFIG_DIR / f"{name_or_path}.toml"
        if not p.exists():
            raise ReproError(f"unknown config {name_or_path!r}: choose one of {', '.join(builtin_configs())} "
                             "or give a path to a .toml file")
    try:
        d = tomllib.loads(p.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ReproError(f"{p}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ReproError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ReproError(f"{p}: not valid TOML ({exc})") from None
    return from_dict(d, str(p))
