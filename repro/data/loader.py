"""Minibatches from a prepared store for training: streaming, prefetched, replica-aware.

Why this shape (Coates et al. 2013): the network is split over the neurons of a layer (model
parallelism), so every rank of one model-parallel group must see *the same* images in the same order;
several such groups (data-parallel replicas) each read their own *disjoint* shards. Both follow from
one rule: the order depends only on ``(seed, epoch, replica)``, never on the rank. Images are read
from memory-mapped shards one batch at a time (the dataset is never in memory) by a background
thread that keeps ``prefetch`` batches ahead; ``images_per_s`` says whether it keeps up.

    store = open_store("data/prepared/mini/train")
    loader = Loader(store, batch_size=64, seed=0, replica=r, n_replicas=R)
    for x in loader:            # one epoch; x: float32 (B, C, H, W) in [0, 1]
        ...
    for x in loader.steps(300): # exactly 300 batches, running over epochs as needed
        ...
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Iterable, Iterator

import numpy as np

from repro.data.store import Store
from repro.errors import ReproError


class Loader:
    """Iterates float32 batches ``(B, C, H, W)`` scaled to [0, 1] (C = 1 for grey stores)."""

    def __init__(self, store: Store, batch_size: int, seed: int = 0, shuffle: bool = True, replica: int = 0,
                 n_replicas: int = 1, drop_last: bool = True, prefetch: int = 4, with_labels: bool = False):
        if batch_size <= 0:
            raise ReproError(f"batch size must be positive, got {batch_size}")
        if not 0 <= replica < n_replicas:
            raise ReproError(f"replica {replica} out of range for {n_replicas} data-parallel replicas")
        self.store, self.batch_size, self.seed, self.shuffle = store, batch_size, seed, shuffle
        self.replica, self.n_replicas, self.drop_last = replica, n_replicas, drop_last
        self.prefetch, self.with_labels = max(1, prefetch), with_labels
        self.epoch = 0
        self._imgs = 0
        self._busy = 0.0
        self.indices = self._replica_indices(replica)
        # all replicas take the same number of steps per epoch (synchronous data parallelism)
        sizes = [len(self._replica_indices(r)) for r in range(n_replicas)]
        n = min(sizes)
        self.batches_per_epoch = n // batch_size if drop_last else -(-max(sizes) // batch_size)
        if self.batches_per_epoch == 0:
            raise ReproError(f"{store.path}: {len(self.indices)} images for replica {replica} of {n_replicas}, "
                             f"fewer than one batch of {batch_size}")

    def _replica_indices(self, r: int) -> np.ndarray:
        """Whole shards go round-robin to replicas; with fewer shards than replicas, images are strided."""
        ns = len(self.store.shards)
        if self.n_replicas == 1:
            return np.arange(len(self.store))
        if ns >= self.n_replicas:
            parts = [self.store.shard_indices(s) for s in range(r, ns, self.n_replicas)]
            return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return np.arange(r, len(self.store), self.n_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The indices of one epoch in reading order: a function of (seed, epoch, replica) only."""
        e = self.epoch if epoch is None else epoch
        idx = self.indices
        if self.shuffle:
            rng = np.random.default_rng([self.seed, e, self.replica])
            idx = idx[rng.permutation(len(idx))]
        if self.drop_last:
            idx = idx[: self.batches_per_epoch * self.batch_size]
        return idx

    def _batch(self, idx: np.ndarray):
        t = time.perf_counter()
        # read in sorted order (sequential within a memory map), then restore the shuffled order
        srt = np.argsort(idx, kind="stable")
        raw = np.empty((len(idx),) + self.store.shape, np.uint8)
        raw[srt] = self.store.images(idx[srt])
        x = to_float(raw)
        self._busy += time.perf_counter() - t
        self._imgs += len(idx)
        if self.with_labels:
            return x, self.store.labels[idx]
        return x

    def _produce(self, batches: Iterator[np.ndarray], q: queue.Queue, stop: threading.Event) -> None:
        try:
            for idx in batches:
                item = self._batch(idx)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - hand the error to the consumer thread
            q.put(_Error(e))

    def _run(self, batches: Iterator[np.ndarray]):
        q: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()
        th = threading.Thread(target=self._produce, args=(batches, q, stop), daemon=True, name="repro-loader")
        th.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Error):
                    raise item.exc
                yield item
        finally:
            stop.set()
            th.join(timeout=5)

    def read(self, index_batches: Iterable[np.ndarray]) -> Iterator[Any]:
        """The batches of the given index arrays, in that order, read ahead on the loader's thread
        (training draws its own per-step indices so that a resumed run sees the same batches)."""
        yield from self._run(iter(index_batches))

    def _epoch_batches(self, epoch: int) -> Iterator[np.ndarray]:
        idx = self.order(epoch)
        for i in range(0, len(idx), self.batch_size):
            yield idx[i:i + self.batch_size]

    def __iter__(self):
        """One epoch (the current one), then ``epoch`` advances by one."""
        e = self.epoch
        yield from self._run(self._epoch_batches(e))
        self.epoch = e + 1

    def steps(self, n: int):
        """Exactly ``n`` batches, crossing epoch boundaries (``epoch`` advances as they are used)."""
        def gen() -> Iterator[np.ndarray]:
            made = 0
            while made < n:
                for b in self._epoch_batches(self.epoch):
                    if made >= n:
                        return
                    yield b
                    made += 1
                self.epoch += 1
        yield from self._run(gen())

    @property
    def images_per_s(self) -> float:
        """How fast the reader thread produces images (time spent reading + converting only)."""
        return self._imgs / self._busy if self._busy > 0 else 0.0


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 ``(B, H, W)`` or ``(B, H, W, C)`` from a store -> float32 ``(B, C, H, W)`` in [0, 1]."""
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class _Error:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()
