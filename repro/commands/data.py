"""``repro data``: list, fetch, prepare, import, verify, check-leak, filter-faces, bench.

    repro data list
    repro data fetch lfw                      # download with resume, check sha256, extract
    repro data fetch lfw --from /media/usb    # no internet: the file(s) you already have
    repro data prepare lfw [--skip-bad]       # raw -> data/prepared/lfw/<split>/
    repro data prepare lfw --for-config faces32   # -> data/prepared/lfw@32x32/<split>/, beside it
    repro data prepare mini                   # built in, no network, a few seconds
    repro data verify lfw                     # sha256 of raw files, pixel hashes, expected counts
    repro data check-leak youtube-frames lfw  # images shared by training and test data (exit 1)
    repro data filter-faces mini              # -> data/prepared/mini-noface/train (control experiment)
    repro data bench mini                     # loader images/s

NAME is a manifest shipped in repro/data_manifests/ (or in $REPRO_MANIFESTS, which comes first) or a
path to a manifest file.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
from rich.table import Table

from repro import atomic
from repro.data import locate
from repro.data.facefilter import FaceDetector, filter_faces
from repro.data.fetch import fetch, recorded_source, unpinned, verify_raw
from repro.data.importer import import_folder
from repro.data.leak import MIN_CORRELATION, check_leak
from repro.data.loader import Loader
from repro.data.manifest import available, load, manifest_dirs
from repro.data import pin as pinning
from repro.data.prepare import prepare, require_store, resolve_dataset
from repro.data.store import is_complete, open_store
from repro.errors import ReproError
from repro.model.config import load_config
from repro.options import ReproGroup, err_console, out_console

root_option = click.option(
    "--root", type=click.Path(file_okay=False, path_type=Path), default="data", envvar="REPRO_DATA",
    show_default=True, show_envvar=True,
    help="Data root ($REPRO_DATA): raw files in ROOT/raw/NAME, stores in ROOT/prepared/NAME[@HxW]/SPLIT.")


@click.group("data", cls=ReproGroup)
def data() -> None:
    """Get, prepare and check the data sets: training frames, test sets, your own folders.

    \b
    Where things live (under the data root, --root or $REPRO_DATA, default ./data):
      ROOT/raw/NAME/                 fetched files, or source.json: the folder you gave with --from
      ROOT/prepared/NAME/SPLIT/      the packed store at the manifest's size
      ROOT/prepared/NAME@HxW/SPLIT/  the same data prepared at another size (HxWx3: colour)
    `repro train --data NAME` and `repro evaluate --data NAME` pick the size their config needs.

    \b
    Manifests (one TOML per data set: files, sha256, licence, how to crop, expected counts) are
    looked up by NAME in $REPRO_MANIFESTS first, then ROOT/manifests/ (where `fetch --pin` writes
    when $REPRO_MANIFESTS is unset), then the shipped repro/data_manifests/. To change a shipped
    one (size, crop, globs, video_every), copy it into a folder, edit it, and point
    $REPRO_MANIFESTS at that folder: your copy hides the shipped one of the same name. Any
    command also takes a path to a .toml instead of NAME.

    \b
    Example, your own training frames and test set:
      repro data fetch youtube-frames --from ~/videos
      repro data prepare youtube-frames --for-config faces32
      repro data import ~/test-photos --name mytest --size 32 32 --positive faces
      repro data check-leak youtube-frames mytest
    """


class _WithNames(click.Command):
    """Appends the data set names known now (shipped, $REPRO_MANIFESTS, ROOT/manifests) to --help."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        try:
            names = [p.stem for p in available(os.environ.get("REPRO_DATA", "data"))]
        except Exception:  # noqa: BLE001 - help must always print
            names = []
        with formatter.section("Known data sets"):
            formatter.write_text(", ".join(names) or "none")
        super().format_epilog(ctx, formatter)


@data.command("list")
@root_option
def list_cmd(root: Path) -> None:
    """The known data sets: what each is, whether fetched, and every prepared store with its image
    size and count (data sets you imported included).

    \b
    Example:
      repro data list --root /shared/repro-data
    """

    t = Table(title="manifests in " + " and ".join(str(d) for d in manifest_dirs(root)))
    t.add_column("name", no_wrap=True)
    for c in ("role", "kind", "expected", "fetched", "prepared (split size: images)"):
        t.add_column(c)
    names = [p.stem for p in available(root)]
    for n in names:
        try:
            m = load(n, root)
        except ReproError as e:
            t.add_row(n, "[red]invalid[/red]", "", e.message, "", "")
            continue
        raw = root / "raw" / m.name
        if m.kind == "builtin":
            fetched = "built in"
        elif m.kind == "local":
            try:
                src = recorded_source(root, m.name)
            except ReproError:
                src = None
            fetched = f"from {src}" if src else "no"
        else:
            fetched = "yes" if raw.is_dir() and any(p.name != "source.json" for p in raw.iterdir()) else "no"
        exp = ", ".join(f"{k}={v:,}" for k, v in m.expected.items())
        role = m.role + (f" ({m.concept})" if m.concept else "")
        t.add_row(m.name, role, m.kind, exp, fetched, _prepared_cell(root, m.name) or "no")
    # stores with no manifest: made by `repro data import` (or a filter)
    prepared = root / "prepared"
    extra = sorted({p.name.split("@", 1)[0] for p in prepared.iterdir() if p.is_dir()} - set(names)) \
        if prepared.is_dir() else []
    for n in extra:
        cell = _prepared_cell(root, n)
        if cell:
            t.add_row(n, "imported" if locate.import_info(root, n) else "", "store", "", "", cell)
    out_console().print(t)


def _prepared_cell(root: Path, name: str) -> str:
    rows = []
    for split, stores in sorted(locate.splits_of(root, name).items()):
        for path, shape in stores:
            try:
                count = int(json.loads((path / "index.json").read_text())["count"])
            except (OSError, ValueError, KeyError, TypeError):
                count = -1
            rows.append(f"{split} {locate.tag(shape)}: {count:,}" if count >= 0 else f"{split} {locate.tag(shape)}: ?")
    return "\n".join(rows)


@data.command("fetch", cls=_WithNames)
@click.argument("name")
@click.option("--from", "from_path", type=click.Path(path_type=Path), default=None,
              help="Use a local file or folder instead of the URLs (machines without internet; for "
                   "'local' data sets: your folder of images/videos or a list file, recorded in "
                   "ROOT/raw/NAME/source.json for every later prepare).")
@click.option("--pin", is_flag=True,
              help="Write the sha256 and size of each file the manifest leaves unpinned into your copy of "
                   "the manifest ($REPRO_MANIFESTS/NAME.toml if set, else ROOT/manifests/NAME.toml), so "
                   "later fetches and `repro data verify` check them.")
@root_option
def fetch_cmd(name: str, from_path: Path | None, pin: bool, root: Path) -> None:
    """Download (resumable) or copy NAME's raw files into ROOT/raw/NAME, check their sha256, and
    extract archives safely. For data sets made of your own files ('local'), record the folder.

    \b
    Examples:
      repro data fetch lfw                          # download, resume after a cut
      repro data fetch lfw --from /media/usb/lfw.tgz --pin
      repro data fetch youtube-frames --from ~/videos
    """

    m = load(name, root)
    if pin and m.kind != "download":
        raise ReproError(f"--pin: '{m.name}' is a {m.kind} data set; only downloaded files have hashes to pin")
    seen: dict[str, tuple[str, int]] = {}
    for line in fetch(m, root, from_path, err_console(), seen=seen):
        err_console().print(line)
    if pin:
        dest, lines = pinning.pin(m, root, seen)
        for line in lines:
            err_console().print(line)
        out_console().print(f"pinned in {dest}" if dest else
                            f"--pin: every file of {m.name} is pinned already in {m.path} (nothing written to "
                            f"{pinning.pin_target(m, root)})")


def for_config_option(verb: str, needs: str):  # noqa: ANN201 - a Click decorator
    """--for-config, worded for the command that takes it (prepare and import share the check)."""
    return click.option("--for-config", "for_config", default=None, metavar="CONFIG",
                        help=f"{verb} at the input size and channels of this network config (faces32, mini, "
                             f"le2012 or a .toml): what {needs}")


def size_option(what: str):  # noqa: ANN201 - a Click decorator
    return click.option("--size", type=(int, int), default=None, metavar="H W", help=f"Output image size, {what}")


@data.command("prepare", cls=_WithNames)
@click.argument("name")
@click.option("--from", "from_path", type=click.Path(path_type=Path), default=None,
              help="Read inputs from this folder (or list file) instead of ROOT/raw/NAME; remembered in "
                   "ROOT/raw/NAME/source.json, so later prepares (another size) need not repeat it.")
@for_config_option("Prepare", "`repro train --config CONFIG --data NAME` needs.")
@size_option("overriding the manifest's (e.g. 32 32). Stores of other sizes stay: the manifest's size in "
             "ROOT/prepared/NAME, others in ROOT/prepared/NAME@HxW.")
@click.option("--grey/--colour", "grey", default=None,
              help="Grey (H, W) or colour (H, W, 3) images (default: the manifest's).")
@click.option("--video-every", type=click.IntRange(0), default=None, metavar="K",
              help="Videos: every K-th frame (0 = one frame per video, the middle one, as the paper did); "
                   "default: the manifest's video_every.")
@click.option("--strict", is_flag=True,
              help="Fail (exit 1) when the images found differ from the manifest's [expected] counts, "
                   "instead of a warning; checked before decoding when the file list already tells.")
@click.option("--skip-bad", is_flag=True, help="Skip undecodable images/videos and report how many.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Decoding threads (default: all cores).")
@click.option("--seed", type=click.IntRange(0), default=None, help="Order / generation seed (default: the manifest's).")
@click.option("--force", is_flag=True, help="Rebuild even if a complete store with these parameters exists.")
@root_option
def prepare_cmd(name: str, from_path: Path | None, for_config: str | None, size: tuple[int, int] | None,
                grey: bool | None, video_every: int | None, strict: bool, skip_bad: bool, workers: int | None,
                seed: int | None, force: bool, root: Path) -> None:
    """Decode NAME's raw files into packed stores ROOT/prepared/NAME[@HxW]/<split>/ (resumable:
    an interrupted prepare goes on from its last finished shard).

    \b
    Examples:
      repro data prepare lfw                              # the manifest's 200x200
      repro data prepare lfw --for-config faces32         # 32x32 grey, beside it
      repro data prepare youtube-frames --from ~/videos --video-every 30 --size 48 48
      repro data prepare lfw --strict                     # exit 1 if images are missing
    """

    m = load(name, root)
    size, grey = _image_shape(for_config, size, grey)
    sums = prepare(m, root, from_path=from_path, skip_bad=skip_bad, workers=workers, force=force, seed=seed,
                   console=err_console(), size=size, grey=grey, video_every=video_every, strict=strict)
    store = Path(sums[0]["store"]).parent if sums and "store" in sums[0] else root / "prepared" / m.name
    t = Table(title=f"{m.name} -> {store}")
    for c in ("split", "images", "skipped", "note"):
        t.add_column(c)
    for s in sums:
        t.add_row(s["split"], str(s["count"]), str(s.get("skipped", 0)), s.get("note", ""))
    out_console().print(t)
    total_skipped = sum(s.get("skipped", 0) for s in sums)
    if total_skipped:
        err_console().print(f"[yellow]skipped {total_skipped} undecodable file(s)[/yellow]")


def _image_shape(for_config: str | None, size: tuple[int, int] | None, grey: bool | None
                 ) -> tuple[tuple[int, int] | None, bool | None]:
    """(size, grey) from --size / --grey|--colour, or from the input of the config --for-config
    names; the two ways must agree when both are given."""
    if size is not None and min(size) <= 0:
        raise ReproError(f"--size: must be two positive integers, got {size[0]} {size[1]}")
    if for_config is None:
        return size, grey
    cfg = load_config(for_config)
    if cfg.channels not in (1, 3):
        raise ReproError(f"--for-config {for_config}: images have 1 or 3 channels, the config wants {cfg.channels}")
    want, want_grey = (int(cfg.input_size[0]), int(cfg.input_size[1])), cfg.channels == 1
    if size is not None and tuple(size) != want:
        raise ReproError(f"--size {size[0]} {size[1]} and --for-config {for_config} "
                         f"({want[0]}x{want[1]}) disagree: give one")
    if grey is not None and grey != want_grey:
        raise ReproError(f"--{'grey' if grey else 'colour'} and --for-config {for_config} "
                         f"({cfg.channels} channel(s)) disagree: give one")
    return want, want_grey


@data.command("import")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Name of the new data set (ROOT/prepared/NAME/SPLIT).")
@for_config_option("Import", "`repro evaluate` of a run of that config needs. Or give --size.")
@size_option("e.g. 32 32 (the network config's input; `repro info --config NAME`). Another size of an "
             "existing NAME goes beside it in ROOT/prepared/NAME@HxW.")
@click.option("--positive", default=None, metavar="CLASS",
              help="The class (sub-folder) labelled 1, every other 0; without it each class gets its index.")
@click.option("--split", default="test", show_default=True, help="Split name of the store (test, val, ...).")
@click.option("--grey/--colour", "grey", default=None, help="Grey (H, W) or colour (H, W, 3) (default: grey).")
@click.option("--crop", type=click.Choice(["center", "none"]), default="center", show_default=True,
              help="center: the largest centred square, then resize; none: squash to the size.")
@click.option("--skip-bad", is_flag=True, help="Skip undecodable images and report how many.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Decoding threads (default: all cores).")
@root_option
def import_cmd(folder: Path, name: str, for_config: str | None, size: tuple[int, int] | None, positive: str | None,
               split: str, grey: bool | None, crop: str, skip_bad: bool, workers: int | None, root: Path) -> None:
    """A labeled store from FOLDER/<class>/*.jpg|png|...: `repro evaluate --data NAME` takes it.

    \b
    Example:
      repro data import ~/photos --name mine --size 32 32 --positive faces   # ~/photos/faces, ~/photos/other
      repro data import ~/photos --name mine --for-config faces32 --positive faces
    """
    size, grey = _image_shape(for_config, size, grey)
    if size is None:
        raise ReproError("give the image size: --size H W, or --for-config CONFIG for a network's input size")
    grey = True if grey is None else grey
    s = import_folder(folder, name, root, size, positive, grey, crop, split, skip_bad, workers, err_console())
    t = Table(title=f"{folder} -> {s['store']}")
    for c in ("class", "images", "label"):
        t.add_column(c)
    for c, n in s["classes"].items():
        t.add_row(c, str(n), str(s["labels"][c]))
    out_console().print(t)
    if s.get("skipped"):
        err_console().print(f"[yellow]skipped {s['skipped']} undecodable file(s)[/yellow]")


@data.command("verify", cls=_WithNames)
@click.argument("name")
@root_option
def verify_cmd(name: str, root: Path) -> None:
    """Check raw files against their pinned sha256, every stored image (at every size) against its
    hash, and the manifest's expected counts. Files whose sha256 the manifest leaves empty are
    listed as unpinned (`repro data fetch NAME --pin` pins them); exit 1 on any problem.

    \b
    Example:
      repro data verify lfw
    """

    m = load(name, root)
    problems: list[str] = []
    notes: list[str] = []
    if m.kind == "download" or m.packages:
        problems += verify_raw(m, root)
        notes += unpinned(m, root)
    t = Table(title=f"verify {m.name}")
    for c in ("split", "size", "images", "positives", "negatives", "unlabeled", "hashes"):
        t.add_column(c)
    totals: dict[str, dict[str, int]] = {}
    for s in m.splits:
        stores = locate.stores_of(root, m.name, s)
        if not stores:
            problems.append(f"{root / 'prepared' / m.name / s}: not prepared (run `repro data prepare {name}`)")
            continue
        for p, shape in stores:
            st = open_store(p)
            bad = st.verify()
            problems += bad
            pos, neg = int((st.labels == 1).sum()), int((st.labels == 0).sum())
            tot = totals.setdefault(locate.tag(shape), {"splits": 0, "images": 0, "positives": 0, "negatives": 0})
            tot["splits"] += 1
            tot["images"] += len(st)
            tot["positives"] += pos
            tot["negatives"] += neg
            exp = m.expected.get(s)
            if exp and exp != len(st):
                problems.append(f"{p}: {len(st)} images, manifest expects {s} = {exp}")
            t.add_row(s, locate.tag(shape), str(len(st)), str(pos), str(neg), str(int((st.labels < 0).sum())),
                      "ok" if not bad else f"{len(bad)} bad")
    for size, tot in totals.items():
        if tot["splits"] == len(m.splits):
            for k in ("images", "positives", "negatives"):
                if m.expected.get(k) and m.expected[k] != tot[k]:
                    problems.append(f"{m.path or m.name}: expected {k} = {m.expected[k]}, prepared stores ({size}) "
                                    f"hold {tot[k]}")
    out_console().print(t)
    for n in notes:
        err_console().print(f"[yellow]{n}[/yellow]")
    if problems:
        for p in problems[1:]:
            err_console().print(f"[red]{p}[/red]")
        more = f" (and {len(problems) - 1} more problems above)" if len(problems) > 1 else ""
        raise ReproError(problems[0] + more)
    unp = f" ({len(notes)} file(s) unpinned: their content is not checked)" if notes else ""
    out_console().print(f"[green]{m.name}: all checks passed{unp}[/green]")


def _operand(x: str, default_split: str, forced: str | None, root: Path):  # noqa: ANN202
    """NAME, NAME@HxW, NAME:SPLIT or a store folder -> its store (a data set with one split uses it)."""
    name, split = x, forced
    if not Path(x).exists() and ":" in x:
        name, _, split = x.rpartition(":")
    path = resolve_dataset(name, split or default_split, root)
    if split is None and not is_complete(path) and not is_complete(Path(name)):
        folder = path.parent
        have = sorted(q.name for q in folder.iterdir() if is_complete(q)) if folder.is_dir() else []
        if len(have) == 1:
            split = have[0]
        elif have:
            raise ReproError(f"{x}: no split {default_split!r}; choose one of {', '.join(have)} as {name}:SPLIT "
                             "or with --split")
    return require_store(name, split or default_split, root)


@data.command("check-leak")
@click.argument("a")
@click.argument("b")
@click.option("--split", default=None,
              help="Split of both A and B (default: A's train and B's test; a data set with a single split uses "
                   "it). NAME:SPLIT sets one side's.")
@click.option("--max-distance", type=click.IntRange(0, 16), default=8, show_default=True,
              help="Near-duplicate candidates: 64-bit difference hashes at most this many bits apart (larger "
                   "finds more, and takes longer on millions of images).")
@click.option("--exact-only", is_flag=True, help="Only identical pixels (fast at any size; same image size only).")
@click.option("--examples", type=click.IntRange(0), default=10, show_default=True, help="Shared pairs to list.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report (counts and examples) to this JSON file.")
@root_option
def check_leak_cmd(a: str, b: str, split: str | None, max_distance: int, exact_only: bool, examples: int,
                   json_out: Path | None, root: Path) -> None:
    """Images of B that are also in A (say A = training data, B = a test set): identical pixels,
    and near-duplicates (resized, re-encoded or brightened copies: difference hashes within
    --max-distance bits whose 16x16 thumbnails correlate >= 0.95). Stores of different sizes are
    compared by the near-duplicate search. Flat images (black frames) are left out of it and counted.

    Exit code: 0 when no image of B is in A, 1 when some are (the report says which), and also 1
    with one `Error:` line on bad input; 2 for a bad option.

    \b
    A and B: a data set name (NAME, NAME@HxW for one size, NAME:SPLIT) or a store folder.
    Examples:
      repro data check-leak youtube-frames lfw
      repro data check-leak youtube-frames@32x32 mytest --json leak.json
      repro data check-leak pypi-faces:train pypi-faces:val
    """

    sa = _operand(a, "train", split, root)
    sb = _operand(b, "test", split, root)
    if Path(sa.path).resolve() == Path(sb.path).resolve():
        raise ReproError(f"{sa.path}: A and B are the same store")
    r = check_leak(sa, sb, max_distance, examples, near=not exact_only)
    t = Table(title=f"images of B found in A (B = {sb.path}, A = {sa.path})")
    t.add_column("")
    t.add_column("images", justify="right")
    t.add_row(f"A: {sa.path} ({'x'.join(map(str, sa.shape))})", f"{len(sa):,}")
    t.add_row(f"B: {sb.path} ({'x'.join(map(str, sb.shape))})", f"{len(sb):,}")
    t.add_row("B images identical to an A image" + ("" if r.same_shape else " (n/a: other image sizes)"),
              f"{r.identical:,}")
    if not exact_only:
        t.add_row(f"B images near-duplicating an A image (<= {max_distance} bits, r >= {MIN_CORRELATION})",
                  f"{r.near:,}")
        t.add_row("flat images not searched for near-duplicates (A / B)", f"{r.flat_a:,} / {r.flat_b:,}")
    con = out_console()
    con.print(t)
    if r.examples:
        e = Table(title="examples")
        for c in ("kind", "bits", "B image", "A image"):
            e.add_column(c)
        for x in r.examples:
            e.add_row(x["kind"], str(x["distance"]), f"{x['b_index']}: {x['b_source']}", f"{x['a_index']}: {x['a_source']}")
        con.print(e)
    if json_out is not None:
        atomic.write_json(json_out, r.as_json())
    if r.leaked:
        con.print(f"[red]leak: {r.leaked:,} of {len(sb):,} images of B are in A[/red]")
        click.get_current_context().exit(1)
    con.print("[green]clean: no image of B is in A[/green]")


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
    """Write a copy of NAME without every image where OpenCV's Haar cascade finds a face (the
    training set of the control experiment, `repro control`).

    \b
    Example:
      repro data filter-faces youtube-frames     # -> ROOT/prepared/youtube-frames-noface/train
    """

    st = require_store(name, split, root)
    out = out or locate.copy_name(st.path, st.name or Path(name).name, "-noface")  # keeps a size tag
    dest = Path(out) if ("/" in out) else root / "prepared" / out / split
    det = FaceDetector(upscale_to=upscale_to, min_face=min_face, min_neighbors=min_neighbors)
    s = filter_faces(st, dest, det, console=err_console())
    out_console().print(f"face filter: removed [bold]{s['removed']}[/bold] of {s['source_count']} images "
                    f"({100.0 * s['removed'] / max(1, s['source_count']):.1f}%), kept {s['kept']} -> {dest}")


@data.command("bench")
@click.argument("name")
@click.option("--split", default="train", show_default=True, help="Which split of NAME to read.")
@click.option("--batch", type=click.IntRange(1), default=100, show_default=True, help="Images per minibatch.")
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True, help="Minibatches to read.")
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True,
              help="Data-parallel replicas the store is split among (this measures replica 0's share).")
@root_option
def bench_cmd(name: str, split: str, batch: int, steps: int, replicas: int, root: Path) -> None:
    """How many images/s the loader delivers from a prepared store, end to end and from its reader
    thread alone. Training reads minibatches through the same loader: if this rate is not well
    above the images/s `repro train` reports, the disk (or the page cache) is the bottleneck, not
    the network: put ROOT on a faster (local) disk.

    \b
    Example:
      repro data bench youtube-frames@32x32 --batch 256 --steps 100
    """

    st = require_store(name, split, root)
    ld = Loader(st, batch, seed=0, replica=0, n_replicas=replicas)
    t = time.perf_counter()
    n = sum(len(x) for x in ld.steps(steps))
    dt = time.perf_counter() - t
    out_console().print(f"{st.path}: {n} images in {dt:.2f}s = {n / dt:.0f} images/s end to end; "
                    f"reader thread {ld.images_per_s:.0f} images/s")
