"""``repro data``: list, fetch, prepare, verify, filter-faces, bench.

    repro data list
    repro data fetch lfw                      # download with resume, check sha256, extract
    repro data fetch lfw --from /media/usb    # no internet: the file(s) you already have
    repro data prepare lfw [--skip-bad]       # raw -> data/prepared/lfw/<split>/
    repro data prepare mini                   # built in, no network, a few seconds
    repro data verify lfw                     # sha256 of raw files, pixel hashes, expected counts
    repro data filter-faces mini              # -> data/prepared/mini-noface/train (control experiment)
    repro data bench mini                     # loader images/s

NAME is a manifest shipped in repro/data_manifests/ (or in $REPRO_MANIFESTS, which comes first) or a
path to a manifest file.
"""
from __future__ import annotations

import time
from pathlib import Path

import click
from rich.table import Table

from repro.data.facefilter import FaceDetector, filter_faces
from repro.data.fetch import fetch, verify_raw
from repro.data.importer import import_folder
from repro.data.loader import Loader
from repro.data.manifest import available, load, manifest_dirs
from repro.data.prepare import prepare, require_store
from repro.data.store import is_complete, open_store
from repro.errors import ReproError
from repro.options import ReproGroup, err_console, out_console

root_option = click.option("--root", type=click.Path(file_okay=False, path_type=Path), default="data",
                           envvar="REPRO_DATA", show_default=True,
                           help="Data root: raw files in ROOT/raw/NAME, stores in ROOT/prepared/NAME ($REPRO_DATA).")


@click.group("data", cls=ReproGroup)
def data() -> None:
    """Get and prepare the data sets (manifests in repro/data_manifests/ and $REPRO_MANIFESTS)."""


@data.command("list")
@root_option
def list_cmd(root: Path) -> None:
    """Known manifests and whether they are fetched / prepared under ROOT."""

    t = Table(title="manifests in " + " and ".join(str(d) for d in manifest_dirs()))
    t.add_column("name", no_wrap=True)
    for c in ("role", "kind", "expected", "fetched", "prepared"):
        t.add_column(c)
    for n in [p.stem for p in available()]:
        try:
            m = load(n)
        except ReproError as e:
            t.add_row(n, "[red]invalid[/red]", "", e.message, "", "")
            continue
        raw = root / "raw" / m.name
        fetched = "built in" if m.kind == "builtin" else ("yes" if raw.is_dir() and any(raw.iterdir()) else "no")
        prep = [s for s in m.splits if (root / "prepared" / m.name / s / "index.json").is_file()]
        exp = ", ".join(f"{k}={v}" for k, v in m.expected.items())
        role = m.role + (f" ({m.concept})" if m.concept else "")
        t.add_row(m.name, role, m.kind, exp, fetched, ", ".join(prep) or "no")
    out_console().print(t)


@data.command("fetch")
@click.argument("name")
@click.option("--from", "from_path", type=click.Path(path_type=Path), default=None,
              help="Use a local file or folder instead of the URLs (machines without internet; for "
                   "'local' manifests: your folder of images/videos or a list file).")
@root_option
def fetch_cmd(name: str, from_path: Path | None, root: Path) -> None:
    """Download (resumable) or copy NAME's raw files, check sha256, extract safely."""

    m = load(name)
    for line in fetch(m, root, from_path, err_console()):
        err_console().print(line)


@data.command("prepare")
@click.argument("name")
@click.option("--from", "from_path", type=click.Path(path_type=Path), default=None,
              help="Read inputs from this folder (or list file) instead of ROOT/raw/NAME.")
@click.option("--skip-bad", is_flag=True, help="Skip undecodable images/videos and report how many.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Decoding threads (default: all cores).")
@click.option("--seed", type=click.IntRange(0), default=None, help="Order / generation seed (default: the manifest's).")
@click.option("--size", type=(int, int), default=None, metavar="H W",
              help="Output image size, overriding the manifest's (e.g. 32 32 for the mini network).")
@click.option("--force", is_flag=True, help="Rebuild even if a complete store with these parameters exists.")
@root_option
def prepare_cmd(name: str, from_path: Path | None, skip_bad: bool, workers: int | None, seed: int | None,
                size: tuple[int, int] | None, force: bool, root: Path) -> None:
    """Decode NAME's raw files into packed stores ROOT/prepared/NAME/<split>/ (resumable)."""

    m = load(name)
    if size is not None:
        if min(size) <= 0:
            raise ReproError(f"--size: must be two positive integers, got {size[0]} {size[1]}")
        m.prepare.size = (size[0], size[1])
    sums = prepare(m, root, from_path=from_path, skip_bad=skip_bad, workers=workers, force=force, seed=seed,
                   console=err_console())
    t = Table(title=f"{m.name} -> {root / 'prepared' / m.name}")
    for c in ("split", "images", "skipped", "note"):
        t.add_column(c)
    for s in sums:
        t.add_row(s["split"], str(s["count"]), str(s.get("skipped", 0)), s.get("note", ""))
    out_console().print(t)
    total_skipped = sum(s.get("skipped", 0) for s in sums)
    if total_skipped:
        err_console().print(f"[yellow]skipped {total_skipped} undecodable file(s)[/yellow]")


@data.command("import")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Name of the new data set (ROOT/prepared/NAME/SPLIT).")
@click.option("--size", type=(int, int), required=True, metavar="H W", help="Output image size, e.g. 32 32.")
@click.option("--positive", default=None, metavar="CLASS",
              help="The class (sub-folder) labelled 1, every other 0; without it each class gets its index.")
@click.option("--split", default="test", show_default=True, help="Split name of the store (test, val, ...).")
@click.option("--grey/--colour", "grey", default=True, show_default=True, help="Grey (H, W) or colour (H, W, 3).")
@click.option("--crop", type=click.Choice(["center", "none"]), default="center", show_default=True,
              help="center: the largest centred square, then resize; none: squash to the size.")
@click.option("--skip-bad", is_flag=True, help="Skip undecodable images and report how many.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Decoding threads (default: all cores).")
@root_option
def import_cmd(folder: Path, name: str, size: tuple[int, int], positive: str | None, split: str, grey: bool,
               crop: str, skip_bad: bool, workers: int | None, root: Path) -> None:
    """A labeled store from FOLDER/<class>/*.jpg|png|...: `repro evaluate --data NAME` takes it.

    Example: repro data import ~/photos --name mine --size 32 32 --positive faces
    """

    s = import_folder(folder, name, root, size, positive, grey, crop, split, skip_bad, workers, err_console())
    t = Table(title=f"{folder} -> {s['store']}")
    for c in ("class", "images", "label"):
        t.add_column(c)
    for c, n in s["classes"].items():
        t.add_row(c, str(n), str(s["labels"][c]))
    out_console().print(t)
    if s.get("skipped"):
        err_console().print(f"[yellow]skipped {s['skipped']} undecodable file(s)[/yellow]")


@data.command("verify")
@click.argument("name")
@root_option
def verify_cmd(name: str, root: Path) -> None:
    """Check raw files' sha256, every stored image's hash, and the manifest's expected counts."""

    m = load(name)
    problems: list[str] = []
    if m.kind == "download" or m.packages:
        problems += verify_raw(m, root)
    t = Table(title=f"verify {m.name}")
    for c in ("split", "images", "positives", "negatives", "unlabeled", "hashes"):
        t.add_column(c)
    tot = {"images": 0, "positives": 0, "negatives": 0}
    for s in m.splits:
        p = root / "prepared" / m.name / s
        if not is_complete(p):
            problems.append(f"{p}: not prepared (run `repro data prepare {name}`)")
            continue
        st = open_store(p)
        bad = st.verify()
        problems += bad
        pos, neg = int((st.labels == 1).sum()), int((st.labels == 0).sum())
        tot["images"] += len(st)
        tot["positives"] += pos
        tot["negatives"] += neg
        exp = m.expected.get(s)
        if exp and exp != len(st):
            problems.append(f"{p}: {len(st)} images, manifest expects {s} = {exp}")
        t.add_row(s, str(len(st)), str(pos), str(neg), str(int((st.labels < 0).sum())), "ok" if not bad else f"{len(bad)} bad")
    if all(is_complete(root / "prepared" / m.name / s) for s in m.splits):
        for k, v in tot.items():
            if m.expected.get(k) and m.expected[k] != v:
                problems.append(f"{m.path or m.name}: expected {k} = {m.expected[k]}, prepared stores hold {v}")
    out_console().print(t)
    if problems:
        for p in problems[1:]:
            err_console().print(f"[red]{p}[/red]")
        more = f" (and {len(problems) - 1} more problems above)" if len(problems) > 1 else ""
        raise ReproError(problems[0] + more)
    out_console().print(f"[green]{m.name}: all checks passed[/green]")


@data.command("filter-faces")
@click.argument("name")
@click.option("--split", default="train", show_default=True, help="Which split of NAME to filter.")
@click.option("--out", "out", default=None,
              help="Output dataset name (ROOT/prepared/OUT/SPLIT) or folder; default NAME-noface.")
@click.option("--min-face", type=click.FloatRange(0, 1, min_open=True), default=0.3, show_default=True, help="Smallest face, fraction of the short side.")
@click.option("--min-neighbors", type=click.IntRange(0), default=3, show_default=True, help="detectMultiScale minNeighbors.")
@click.option("--upscale-to", type=click.IntRange(1), default=128, show_default=True, help="Upscale so the short side is at least this.")
@root_option
def filter_faces_cmd(name: str, split: str, out: str | None, min_face: float, min_neighbors: int,
                     upscale_to: int, root: Path) -> None:
    """Write a copy of NAME without every image where OpenCV's Haar cascade finds a face."""

    st = require_store(name, split, root)
    out = out or f"{st.name or Path(name).name}-noface"
    dest = Path(out) if ("/" in out) else root / "prepared" / out / split
    det = FaceDetector(upscale_to=upscale_to, min_face=min_face, min_neighbors=min_neighbors)
    s = filter_faces(st, dest, det, console=err_console())
    out_console().print(f"face filter: removed [bold]{s['removed']}[/bold] of {s['source_count']} images "
                    f"({100.0 * s['removed'] / max(1, s['source_count']):.1f}%), kept {s['kept']} -> {dest}")


@data.command("bench")
@click.argument("name")
@click.option("--split", default="train", show_default=True)
@click.option("--batch", type=click.IntRange(1), default=100, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True)
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True)
@root_option
def bench_cmd(name: str, split: str, batch: int, steps: int, replicas: int, root: Path) -> None:
    """How many images/s the loader delivers from a prepared store (should beat training's rate)."""

    st = require_store(name, split, root)
    ld = Loader(st, batch, seed=0, replica=0, n_replicas=replicas)
    t = time.perf_counter()
    n = sum(len(x) for x in ld.steps(steps))
    dt = time.perf_counter() - t
    out_console().print(f"{st.path}: {n} images in {dt:.2f}s = {n / dt:.0f} images/s end to end; "
                    f"reader thread {ld.images_per_s:.0f} images/s")
