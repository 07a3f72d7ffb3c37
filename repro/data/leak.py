"""Images shared between two stores: identical pixels, and near-duplicates by a difference hash.

Why: a test image that is also in the training data (the same photograph in two collections, a
video frame and a thumbnail of it, a re-encoded copy) flatters every score measured on it, and
nothing else in the pipeline would notice.

* **Identical**: the pixel sha256 every store record carries (``repro.data.store``); only stores of
  the same image shape can share one.
* **Near-duplicates**: a 64-bit difference hash (dHash): the image shrunk to 9x8 grey with area
  averaging, one bit per horizontally adjacent pair (is the right one brighter?). It survives
  resizing, re-encoding, brightness and contrast changes, so it also compares stores of different
  sizes. Pairs whose hashes differ in at most ``max_distance`` bits are candidates; a candidate is
  a near-duplicate when the two images' 16x16 grey thumbnails also correlate at least
  ``MIN_CORRELATION``. The hash alone is not enough on small images: on the built-in 32x32 data,
  unrelated smooth crops (sky, gravel, a video frame) come within 4-8 bits of each other, with
  thumbnail correlations up to 0.87, while copies of a test image resized to 200x200, brightened
  and saved as JPEG at quality 60 stayed within 8 bits and correlated 0.98 or more. Flat images
  (the 9x8 thumbnail spans fewer than ``FLAT_RANGE`` grey levels: black frames, blank walls) all
  hash alike, so they are left out of the near search and counted instead.

The search is exact, not sampled: with distance d the 64 bits are cut into d + 1 blocks, and two
hashes within d bits agree on at least one whole block (pigeonhole), so each block is an exact
join (sort, then binary search) and only its candidates are compared bit by bit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from repro.data.store import Store

FLAT_RANGE = 4  # grey levels (of 255) a thumbnail must span to count as having structure
MIN_CORRELATION = 0.95  # thumbnails of a near-duplicate pair correlate at least this much
_CHUNK_PAIRS = 2_000_000  # candidate pairs compared at once (bounded memory)
_CONFIRM_PAIRS = 100_000  # candidate pairs whose thumbnails are compared at once


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (``np.bitwise_count`` from NumPy 2.0, a byte table before)."""
    f = getattr(np, "bitwise_count", None)
    if f is not None:
        return f(x).astype(np.int16)
    table = np.array([bin(i).count("1") for i in range(256)], np.int16)
    return table[np.ascontiguousarray(x).view(np.uint8).reshape(len(x), 8)].sum(1).astype(np.int16)


def _area(m: int, n: int) -> np.ndarray:
    """(m, n) weights averaging n pixels into m (area interpolation: each output is the mean over
    its span of the input, fractional pixels weighted by their overlap), as one matrix product."""
    edges = np.arange(m + 1) * (n / m)
    k = np.arange(n)
    over = np.clip(np.minimum(edges[1:, None], k[None, :] + 1) - np.maximum(edges[:-1, None], k[None, :]), 0, None)
    return (over / (n / m)).astype(np.float32)


def dhash_images(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64 (n,), flat bool (n,)) of uint8 images (n, H, W) or (n, H, W, 3)."""
    x = np.asarray(images)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    g = x.astype(np.float32)
    if g.ndim == 4:
        g = g[..., :3] @ np.asarray([0.299, 0.587, 0.114], np.float32)
    small = _area(8, g.shape[1]) @ g @ _area(9, g.shape[2]).T  # two small matrix products for all images
    bits = small[:, :, 1:] > small[:, :, :-1]
    packed = np.packbits(bits.reshape(n, 64), axis=1)  # 8 bytes, first bit most significant
    hashes = packed.view(">u8").reshape(n).astype(np.uint64)
    flat = (small.max(axis=(1, 2)) - small.min(axis=(1, 2))) < FLAT_RANGE
    return hashes, flat


def store_hashes(st: Store) -> tuple[np.ndarray, np.ndarray]:
    """dHash and flatness of every image of a store, one shard at a time."""
    hs, fl = [], []
    for s in range(len(st.shards)):
        h, f = dhash_images(np.asarray(st.shard(s)))
        hs.append(h)
        fl.append(f)
    return (np.concatenate(hs) if hs else np.zeros(0, np.uint64)), (np.concatenate(fl) if fl else np.zeros(0, bool))


def _sha_keys(st: Store) -> np.ndarray:
    """The first 64 bits of each image's pixel sha256, from its records (store order)."""
    return np.fromiter((int(r["sha256"][:16], 16) for r in st.records), dtype=np.uint64, count=len(st))


def exact_matches(ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
    """For each key of B, the index of an equal key in A, or -1."""
    out = np.full(len(kb), -1, np.int64)
    if len(ka) == 0 or len(kb) == 0:
        return out
    order = np.argsort(ka, kind="stable")
    sa = ka[order]
    pos = np.minimum(np.searchsorted(sa, kb), len(sa) - 1)
    hit = sa[pos] == kb
    out[hit] = order[pos[hit]]
    return out


def count_candidates(ha: np.ndarray, hb: np.ndarray, d: int) -> int:
    """How many pairs :func:`candidate_pairs` would compare (an upper bound on its work), cheaply:
    one sort and two binary searches per block, no pair built."""
    total = 0
    bounds = np.linspace(0, 64, d + 2).round().astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        mask = np.uint64((1 << (hi - lo)) - 1)
        sa = np.sort((ha >> np.uint64(lo)) & mask)
        kb = (hb >> np.uint64(lo)) & mask
        total += int((np.searchsorted(sa, kb, "right") - np.searchsorted(sa, kb, "left")).sum())
    return total


def candidate_pairs(ha: np.ndarray, hb: np.ndarray, d: int, chunk: int = _CHUNK_PAIRS):
    """Every (A index, B index, distance) whose hashes differ in at most ``d`` bits, in chunks.

    Each pair comes once: from the first block on which its two hashes agree."""
    if not (len(ha) and len(hb)):
        return
    bounds = np.linspace(0, 64, d + 2).round().astype(int)
    masks = [(np.uint64(lo), np.uint64((1 << (hi - lo)) - 1)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    for k, (lo, mask) in enumerate(masks):
        ka, kb = (ha >> lo) & mask, (hb >> lo) & mask
        order = np.argsort(ka, kind="stable")
        sa = ka[order]
        left, right = np.searchsorted(sa, kb, "left"), np.searchsorted(sa, kb, "right")
        cnt = right - left
        nz = np.nonzero(cnt)[0]
        start = 0
        while start < len(nz):  # B images in groups whose candidates fit ``chunk``
            csum = np.cumsum(cnt[nz[start:]])
            stop = start + max(1, int(np.searchsorted(csum, chunk, "right")))
            idx = nz[start:stop]
            c = cnt[idx]
            bi = np.repeat(idx, c)
            ai = order[np.repeat(left[idx], c) + np.arange(len(bi)) - np.repeat(np.cumsum(c) - c, c)]
            x = ha[ai] ^ hb[bi]
            keep = _popcount(x) <= d
            for lo2, mask2 in masks[:k]:  # agreed on an earlier block: already given there
                keep &= ((x >> lo2) & mask2) != 0
            if keep.any():
                yield ai[keep], bi[keep], _popcount(x[keep])
            start = stop


def thumbnails(st: Store, idx: np.ndarray) -> np.ndarray:
    """(len(idx), 256) grey 16x16 area thumbnails, zero mean and unit norm (for a correlation)."""
    x = st.images(idx).astype(np.float32)
    if x.ndim == 4:
        x = x[..., :3] @ np.asarray([0.299, 0.587, 0.114], np.float32)
    t = (_area(16, x.shape[1]) @ x @ _area(16, x.shape[2]).T).reshape(len(idx), 256)
    t -= t.mean(1, keepdims=True)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-6)


def near_matches(a: Store, b: Store, ia: np.ndarray, ib: np.ndarray, ha: np.ndarray, hb: np.ndarray,
                 d: int, min_corr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each image of B (by store index): the A image that is its near-duplicate (hashes within
    ``d`` bits, thumbnails correlated at least ``min_corr``; the best correlated), or -1; with the
    pair's distance and correlation. ``ia``/``ib`` are the images searched, ``ha``/``hb`` their hashes."""
    best_a = np.full(len(b), -1, np.int64)
    best_d = np.full(len(b), -1, np.int16)
    best_c = np.full(len(b), -np.inf, np.float32)
    for pa, pb, dist in candidate_pairs(ha, hb, d, chunk=_CONFIRM_PAIRS):
        ga, gb = ia[pa], ib[pb]
        ua, ra = np.unique(ga, return_inverse=True)
        ub, rb = np.unique(gb, return_inverse=True)
        corr = np.einsum("ij,ij->i", thumbnails(a, ua)[ra], thumbnails(b, ub)[rb])
        ok = corr >= min_corr
        gb, ga, dist, corr = gb[ok], ga[ok], dist[ok], corr[ok]
        srt = np.lexsort((ga, -corr, gb))  # per B image: the best correlated, then the lowest A index
        gb, ga, dist, corr = gb[srt], ga[srt], dist[srt], corr[srt]
        one = np.r_[True, gb[1:] != gb[:-1]] if len(gb) else np.zeros(0, bool)
        gb, ga, dist, corr = gb[one], ga[one], dist[one], corr[one]
        better = (corr > best_c[gb]) | ((corr == best_c[gb]) & (ga < best_a[gb]))
        gb, ga, dist, corr = gb[better], ga[better], dist[better], corr[better]
        best_a[gb], best_d[gb], best_c[gb] = ga, dist, corr
    return best_a, best_d, best_c


@dataclass
class LeakReport:
    a: str
    b: str
    a_images: int
    b_images: int
    same_shape: bool
    max_distance: int
    min_correlation: float
    identical: int  # B images whose pixels equal an A image's
    near: int  # further B images with a near-duplicate in A
    flat_a: int  # images left out of the near search
    flat_b: int
    near_searched: bool = True
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def leaked(self) -> int:
        return self.identical + self.near

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "leaked": self.leaked}


def check_leak(a: Store, b: Store, max_distance: int = 8, examples: int = 10, near: bool = True,
               min_corr: float = MIN_CORRELATION, max_pairs: int | None = None) -> LeakReport:
    """Which images of B (say, a test set) are in A (say, the training data), identical or near.
    With ``max_pairs``, the near search is skipped (``near_searched`` false) when it would compare
    more candidate pairs than that (very large stores, or many alike images)."""
    same = tuple(a.shape) == tuple(b.shape)
    ex_a = exact_matches(_sha_keys(a), _sha_keys(b)) if same else np.full(len(b), -1, np.int64)
    near_a = np.full(len(b), -1, np.int64)
    near_d = np.full(len(b), -1, np.int16)
    flat_a = flat_b = 0
    if near:
        ha, fa = store_hashes(a)
        hb, fb = store_hashes(b)
        flat_a, flat_b = int(fa.sum()), int(fb.sum())
        ia, ib = np.nonzero(~fa)[0], np.nonzero(~fb)[0]
        if max_pairs is not None and count_candidates(ha[ia], hb[ib], max_distance) > max_pairs:
            near = False
        else:
            near_a, near_d, _ = near_matches(a, b, ia, ib, ha[ia], hb[ib], max_distance, min_corr)
    near_only = (ex_a < 0) & (near_a >= 0)
    rep = LeakReport(str(a.path), str(b.path), len(a), len(b), same, max_distance, min_corr,
                     int((ex_a >= 0).sum()), int(near_only.sum()), flat_a, flat_b, near_searched=near)
    picks = [(int(j), int(ex_a[j]), 0, "identical") for j in np.nonzero(ex_a >= 0)[0][:examples]]
    order = np.nonzero(near_only)[0]
    order = order[np.argsort(near_d[order], kind="stable")]
    picks += [(int(j), int(near_a[j]), int(near_d[j]), "near") for j in order[:max(0, examples - len(picks))]]
    for j, i, dist, kind in picks:
        rep.examples.append({"kind": kind, "distance": dist, "b_index": j, "b_source": _source(b, j),
                             "a_index": i, "a_source": _source(a, i)})
    return rep


def _source(st: Store, i: int) -> str:
    try:
        return str(st.records[i].get("source", ""))
    except Exception:  # noqa: BLE001 - a report line must not fail on one unreadable record
        return ""


# The evaluate hook should cost seconds, not minutes: up to HOOK_LIMIT training images, near-duplicates
# within 4 bits (most copies; `repro data check-leak` searches 8 by default) and only while the search
# compares at most HOOK_PAIRS candidate pairs (else identical images only). Beyond that the user runs
# `repro data check-leak` on purpose.
HOOK_LIMIT = 1_000_000
HOOK_PAIRS = 20_000_000


def leak_warning(test_stores: list[Store], train_store: Store, max_distance: int = 4) -> str | None:
    """One line when the test stores share images with the training store, else None."""
    if len(train_store) > HOOK_LIMIT:
        return None
    shared, ident, total, worst = 0, 0, 0, None
    for st in test_stores:
        if str(st.path) == str(train_store.path):
            continue
        r = check_leak(train_store, st, max_distance, examples=1, max_pairs=HOOK_PAIRS)
        shared += r.leaked
        ident += r.identical
        total += len(st)
        if r.leaked and worst is None:
            worst = st
    if not shared:
        return None
    return (f"warning: {shared} of {total} test images are also in the training data {train_store.path} "
            f"({ident} identical, {shared - ident} near-duplicates); their scores are flattered: "
            f"`repro data check-leak {train_store.path} {worst.path}` lists them")


def warn_leak(test_stores: list[Store], train_store: Store, console: Any) -> str | None:
    """``repro evaluate``'s hook: print :func:`leak_warning`'s line, if any, on ``console`` (stderr)."""
    line = leak_warning(test_stores, train_store)
    if line and console is not None:
        console.print(line, markup=False, highlight=False, style="yellow")
    return line
