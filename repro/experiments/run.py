"""What every experiment shares: the run folder, the backend, the world, the data, writing results."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro import atomic
from repro.data.builtin import builtin_manifest, ensure_builtin
from repro.data.prepare import require_store, resolve_dataset
from repro.engine.backend import Backend, local_rank_from_env, select_backend
from repro.engine.comm import World, world
from repro.errors import ReproError
from repro.experiments.testset import TestSet
from repro.model import checkpoint as ckpt
from repro.model.config import load_config
from repro.model.network import load_checkpoint


@dataclass
class Session:
    """One command's world, backend and run folder (the same on every rank)."""

    w: World
    backend: Backend
    run: Path

    @property
    def xp(self) -> Any:
        return self.backend.xp

    def create_folder(self) -> None:
        """Collective: make the run folder (rank 0), once the command knows it will write into it."""
        if self.w.is_root:
            try:
                self.run.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ReproError(f"{self.run}: cannot create run folder ({exc.strerror})") from None
        self.w.barrier()

    def write_json(self, name: str, obj: Any) -> Path:
        """Rank 0 writes ``RUN/name`` atomically (temp file, then rename)."""
        path = self.run / name
        if self.w.is_root:
            atomic.write_json(path, obj)
        return path


def open_session(device: str, run: str | None, create: bool | None = True) -> Session:
    """Pick the backend, agree on the run folder across ranks; ``create``: make it now (True), require
    it (False), or leave it to ``Session.create_folder`` (None: a failed start leaves no empty folder)."""
    w = world()
    try:
        backend = select_backend(device, local_rank_from_env())
    except (RuntimeError, ValueError) as exc:
        raise ReproError(str(exc)) from None
    if run is None:
        stamp = time.strftime("%Y%m%d-%H%M%S") if w.is_root else None
        run = str(Path("results") / w.bcast(stamp))
    session = Session(w, backend, Path(run))
    if create:
        session.create_folder()
    elif create is not None and not session.run.exists():
        raise ReproError(f"{session.run}: no such run folder")
    return session


# ---------------------------------------------------------------------------------------------
# The data a run trains and is tested on
# ---------------------------------------------------------------------------------------------
# concept -> the prepared test stores that make its test set (positives, then negatives), as in
# data_manifests/: faces = lfw + imagenet-negatives, cat faces = cat-heads + imagenet-negatives,
# human bodies = daimler-pedestrians (both labels). A run trained on a built-in data set that holds
# labeled splits of the concept (``pypi-faces``, ``mini``) is tested on those.
CONCEPT_SETS = {"faces": ("lfw", "imagenet-negatives"), "cats": ("cat-heads", "imagenet-negatives"),
                "bodies": ("daimler-pedestrians",)}


def run_folder(ckpt: Path) -> Path:
    """The run a checkpoint folder belongs to (``RUN/checkpoints/step-N`` -> ``RUN``)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def data_record(store: Any) -> dict[str, Any]:
    """What ``RUN/data.json`` says about the training store: enough to find it and to notice if it changed."""
    return {"name": store.name, "split": store.split, "store": str(Path(store.path).resolve()),
            "count": len(store), "shape": list(store.shape), "fingerprint": store.fingerprint()}


def recorded_training_data(run: Path) -> dict[str, Any] | None:
    """What ``RUN/data.json`` recorded about the training store, if the store still exists there."""

    try:
        rec = json.loads((Path(run) / "data.json").read_text())
        ok = isinstance(rec, dict) and (Path(rec["store"]) / "index.json").is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rec if ok else None


def training_data_of(run: Path, given: str | None, config_data: str) -> tuple[str, str]:
    """(training store to open, the run's data set name): the store is ``given`` (an option), else what
    the run recorded, else its config's data; the name, which decides the built-in test split that
    belongs to the run, is always what the run was trained on."""
    rec = recorded_training_data(run)
    name = str(rec.get("name") or config_data) if rec is not None else config_data
    if given:
        return given, name
    return (str(rec["store"]) if rec is not None else config_data), name


def _ensure_builtin(session: Session, name: str, root: str, console: Any = None) -> None:
    """A built-in data set is made on first use, by rank 0, while the others wait."""

    if builtin_manifest(name) is None:
        return
    if session.w.is_root:
        ensure_builtin(name, root, console=console)
    session.w.barrier()


def training_store(session: Session, name: str, root: str, console: Any = None, cfg: Any = None) -> Any:
    """The training store NAME (a built-in set is made on first use); others must be prepared, at
    ``cfg``'s input size when given (a data set may be prepared at several sizes)."""

    _ensure_builtin(session, name, root, console)
    return require_store(name, "train", root, *_want(cfg))


def _want(cfg: Any) -> tuple[tuple[int, ...] | None, str | None]:
    """(image shape, config name) a config's input needs of a store, or (None, None)."""
    if cfg is None:
        return None, None
    h, w = cfg.input_size
    return ((h, w) if cfg.channels == 1 else (h, w, cfg.channels)), cfg.name


def test_set_names(concept: str, train_data: str | list[str], data: tuple[str, ...] | list[str]) -> list[str]:
    """The stores of a concept's test set: ``--data`` if given, else the labeled splits of the first
    built-in data set among ``train_data`` (the run's training data, then its config's) that has them
    for this concept, else the concept's downloadable sets."""

    names: list[str] = []
    for d in data:
        names += [n.strip() for n in d.split(",") if n.strip()]
    if names:
        return names
    for cand in [train_data] if isinstance(train_data, str) else train_data:
        m = builtin_manifest(str(cand))
        if m is not None and m.concept == concept:
            return [m.name]
    return list(CONCEPT_SETS[concept])


def open_test_set(session: Session, names: list[str], root: str, split: str = "test", console: Any = None,
                  cfg: Any = None) -> Any:
    """The labeled images of ``split`` of every named store (at ``cfg``'s input size when given), as
    one evaluate ``TestSet``."""

    stores = []
    for n in names:
        _ensure_builtin(session, n, root, console)
        path = resolve_dataset(n, split, root, _want(cfg)[0])
        if not (path / "index.json").is_file() and path.parent.is_dir():
            have = sorted(p.name for p in path.parent.iterdir() if (p / "index.json").is_file())
            if have:
                raise ReproError(f"{path.parent}: has no split {split!r} (it has: {', '.join(have)}); "
                                 f"choose one with --split")
        stores.append(require_store(n, split, root, *_want(cfg)))
    return TestSet.of(names, stores, split)


# ---------------------------------------------------------------------------------------------
# The Run: one trained run folder, as every step after training sees it
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained run: its folder, checkpoint, config, the data it was trained on, the world and
    backend; the one place where "resolve checkpoint -> config -> compatibility -> session" lives.

    ``Run.open`` resolves a run folder, its checkpoints folder or one checkpoint folder; with
    ``config_name`` the checkpoint must have been written by that config (else one line)."""

    session: Session
    checkpoint: Path
    cfg: Any
    root: str

    @classmethod
    def open(cls, device: str, checkpoint: str | Path, config_name: str | None = None, root: str = "data") -> "Run":

        path = ckpt.resolve(checkpoint)
        cfg = load_config(config_name) if config_name else ckpt.config_of(path)
        ckpt.check_compatible(path, cfg)
        return cls(open_session(device, str(run_folder(path)), create=False), path, cfg, str(root))

    @property
    def folder(self) -> Path:
        return self.session.run

    @property
    def w(self) -> World:
        return self.session.w

    def network(self) -> tuple[Any, dict[str, Any]]:
        """The network of the checkpoint (this rank's tiles) and the checkpoint's manifest."""

        return load_checkpoint(self.checkpoint, self.cfg, self.session.xp, self.w)

    def stage(self, layer: int | None) -> int:
        """``--layer``: a stage index of this config (default: the top), or one line."""
        n = len(self.cfg.stages)
        stage = n - 1 if layer is None else layer
        if not 0 <= stage < n:
            raise ReproError(f"--layer {stage}: config {self.cfg.name!r} has stages 0..{n - 1}")
        return stage

    def training_data(self, given: str | None = None, console: Any = None) -> Any:
        """The store the run was trained on (``RUN/data.json``), or ``given`` (an option)."""
        store, _ = training_data_of(self.folder, given, self.cfg.data)
        return training_store(self.session, store, self.root, console, self.cfg)

    @property
    def data_name(self) -> str:
        """The data set the run was trained on (recorded, else its config's)."""
        return training_data_of(self.folder, None, self.cfg.data)[1]

    def test_set(self, concept: str, data: tuple[str, ...] | list[str] = (), split: str = "test",
                 console: Any = None, stores: list[str] | None = None) -> Any:
        """The labelled test set of ``concept`` (``stores`` if given, else ``--data``, else the
        built-in set the run was trained on, else the concept's), checked against the network."""
        names = stores or test_set_names(concept, [self.data_name, self.cfg.data], data)
        ts = open_test_set(self.session, names, self.root, split, console, self.cfg)
        ts.check(self.cfg)
        return ts
