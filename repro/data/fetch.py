"""Getting raw files: resumable HTTP(S) download or a local copy, sha256 check, safe extraction.

Why this much care: the data sets are tens of GB from servers that drop connections, so a download
resumes from ``<file>.part`` with an HTTP Range request; a file is only renamed to its final name
once its sha256 matches the manifest. Archives come from third parties, so extraction refuses any
entry that would land outside the target folder (absolute paths, ``..``, links pointing out) and
reports a truncated archive as one line instead of a traceback.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import lzma
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from repro import atomic
from repro.data import pypi
from repro.data.manifest import FileSpec, Manifest
from repro.errors import ReproError

CHUNK = 1 << 20


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                b = f.read(CHUNK)
                if not b:
                    break
                h.update(b)
                if progress:
                    progress(len(b))
    except OSError as e:
        raise ReproError(f"{path}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()


def _progress(console: Console | None) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console or Console(stderr=True),
                    transient=False)


def download(url: str, dest: Path, sha256: str = "", size: int = 0, console: Console | None = None,
             timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a previous partial download."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "repro-data/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # already complete: server has nothing past our end
            return _finish(part, dest, sha256, url)
        raise ReproError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise ReproError(f"{url}: cannot download ({reason}); on a machine without internet use "
                         f"`repro data fetch NAME --from PATH`") from None
    with resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:
            have = 0  # server ignored Range: start over
        total = resp.headers.get("Content-Length")
        total_n = (int(total) + have) if total and total.isdigit() else (size or None)
        mode = "ab" if have else "wb"
        with _progress(console) as prog, open(part, mode) as out:
            task = prog.add_task(dest.name, total=total_n, completed=have)
            try:
                while True:
                    b = resp.read(CHUNK)
                    if not b:
                        break
                    out.write(b)
                    prog.update(task, advance=len(b))
            except (OSError, ValueError, http.client.HTTPException) as e:
                raise ReproError(f"{url}: connection lost after {out.tell()} bytes ({e}); "
                                 f"run fetch again to resume") from None
    if total_n and part.stat().st_size < total_n:
        raise ReproError(f"{url}: download incomplete ({part.stat().st_size} of {total_n} bytes); "
                         f"run fetch again to resume")
    return _finish(part, dest, sha256, url)


def _finish(part: Path, dest: Path, sha256: str, origin: str) -> Path:
    got = sha256_file(part)
    if sha256 and got != sha256:
        bad = part.with_name(dest.name + ".bad")
        os.replace(part, bad)
        raise ReproError(f"{origin}: sha256 mismatch for {dest.name} (expected {sha256}, got {got}); "
                         f"kept as {bad}")
    os.replace(part, dest)
    return dest


def copy_local(src: Path, dest: Path, sha256: str = "", console: Console | None = None) -> Path:
    """Copy a file the user already has (``--from``) into the raw folder, checked like a download."""
    if not src.is_file():
        raise ReproError(f"{src}: no such file")
    if not os.access(src, os.R_OK):
        raise ReproError(f"{src}: not readable")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _progress(console) as prog, open(src, "rb") as fi, open(part, "wb") as fo:
        task = prog.add_task(dest.name, total=src.stat().st_size)
        while True:
            b = fi.read(CHUNK)
            if not b:
                break
            fo.write(b)
            prog.update(task, advance=len(b))
    return _finish(part, dest, sha256, str(src))


# ------------------------------------------------------------------ safe extraction
def _safe_rel(name: str, archive: Path) -> PurePosixPath:
    """Validate an archive member name; returns its relative path inside the target."""
    n = name.replace("\\", "/")
    p = PurePosixPath(n)
    if n.startswith("/") or (len(n) > 1 and n[1] == ":") or p.is_absolute():
        raise ReproError(f"{archive}: entry {name!r} has an absolute path (would escape the target folder)")
    if ".." in p.parts:
        raise ReproError(f"{archive}: entry {name!r} contains '..' (would escape the target folder)")
    parts = [x for x in p.parts if x not in (".", "")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _check_link(rel: PurePosixPath, target: str, archive: Path, name: str, hard: bool) -> PurePosixPath:
    """A link target must resolve inside the extraction folder."""
    t = target.replace("\\", "/")
    if t.startswith("/") or (len(t) > 1 and t[1] == ":"):
        raise ReproError(f"{archive}: link {name!r} -> {target!r} points outside the target folder")
    base = [] if hard else list(rel.parent.parts)
    for part in PurePosixPath(t).parts:
        if part == "..":
            if not base:
                raise ReproError(f"{archive}: link {name!r} -> {target!r} points outside the target folder")
            base.pop()
        elif part not in (".", ""):
            base.append(part)
    return PurePosixPath(*base) if base else PurePosixPath(".")


def _inside(path: Path, root: Path, archive: Path, name: str) -> Path:
    """``path``, after following every link already extracted, must stay inside ``root``.

    Checking each link's target by itself is not enough: links can be chained (``a -> .``, then
    ``b -> a/..``: each looks harmless, together they point above the folder), so every write and
    every link is checked where it really lands.
    """
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != top and top not in real.parents:
        raise ReproError(f"{archive}: entry {name!r} resolves outside the target folder (through a link)")
    return path


def _check_links_inside(tmp: Path, archive: Path) -> None:
    """After extraction: every link in the tree resolves inside it (targets may be created late)."""
    for dirpath, dirnames, filenames in os.walk(tmp):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                _inside(p, tmp, archive, str(p.relative_to(tmp)))


def archive_kind(path: Path) -> str | None:
    n = path.name.lower()
    if n.endswith(".zip"):
        return "zip"
    if n.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    return None


_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)


def extract(archive: Path, target: Path) -> list[Path]:
    """Extract zip/tar(.gz/.bz2/.xz) into ``target`` (all-or-nothing via a temp folder).

    Entries first land in ``target/.extract-<archive>.tmp``; only when every entry was read fully are
    they moved into ``target``. Returns the top-level paths created.
    """
    kind = archive_kind(archive)
    if kind is None:
        raise ReproError(f"{archive}: not a zip or tar archive (by its name)")
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".extract-{archive.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if kind == "zip":
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
    except ReproError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except _ARCHIVE_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ReproError(f"{archive}: truncated or corrupt archive ({e.__class__.__name__}: {e})") from None
    try:
        _check_links_inside(tmp, archive)
    except ReproError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    created = [target / e.name for e in sorted(tmp.iterdir())]
    _merge(tmp, target)
    return created


def _merge(src: Path, dst: Path) -> None:
    """Move ``src``'s tree into ``dst``: folders merge (two archives may share a top folder), files replace."""
    for entry in sorted(src.iterdir()):
        dest = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and dest.is_dir() and not dest.is_symlink():
            _merge(entry, dest)
            continue
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.is_dir():
            shutil.rmtree(dest)
        os.replace(entry, dest)
    src.rmdir()


def _write_member(src, dest: Path, size: int, archive: Path, name: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(dest, "wb") as out:
        while True:
            b = src.read(CHUNK)
            if not b:
                break
            out.write(b)
            n += len(b)
    if n != size:
        raise ReproError(f"{archive}: truncated archive (entry {name!r} has {n} of {size} bytes)")


# tarfile's "data" filter (what ``extractall(filter="data")`` applies; Python 3.12, 3.11.4, 3.10.12
# and later): refuses absolute names, ".." escapes, links out of the folder and device files by
# itself. We extract member by member (streaming, with our own checks, which give the clearer
# message), so each member also passes the filter: a second line of defence should ours miss.
_DATA_FILTER = getattr(tarfile, "data_filter", None)


def _extract_tar(archive: Path, tmp: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for m in tar:  # streaming: member list is read as we go (a truncation raises here)
            rel = _safe_rel(m.name, archive)
            if rel == PurePosixPath("."):
                continue
            dest = _inside(tmp / rel, tmp, archive, m.name)
            tgt = None
            if m.issym():
                _check_link(rel, m.linkname, archive, m.name, hard=False)
            elif m.islnk():
                tgt = _check_link(rel, m.linkname, archive, m.name, hard=True)
            elif not (m.isdir() or m.isfile()):
                raise ReproError(f"{archive}: entry {m.name!r} is a device or fifo; refusing to extract")
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                _write_member(f, dest, m.size, archive, m.name)
            elif m.issym():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(m.linkname, dest)
                _inside(dest, tmp, archive, m.name)
            else:
                src = tmp / tgt
                if not src.is_file():
                    raise ReproError(f"{archive}: hard link {m.name!r} -> {m.linkname!r} has no earlier target")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
            if _DATA_FILTER is not None:  # after our checks (clearer messages); a refusal removes everything
                try:
                    _DATA_FILTER(m, str(tmp))
                except tarfile.FilterError as e:
                    raise ReproError(f"{archive}: entry {m.name!r} refused by tarfile's data filter ({e})") from None


def _extract_zip(archive: Path, tmp: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            rel = _safe_rel(info.filename, archive)
            if rel == PurePosixPath("."):
                continue
            dest = _inside(tmp / rel, tmp, archive, info.filename)
            mode = info.external_attr >> 16
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif stat.S_ISLNK(mode):
                link = z.read(info).decode("utf-8", "replace")
                _check_link(rel, link, archive, info.filename, hard=False)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(link, dest)
                _inside(dest, tmp, archive, info.filename)
            else:
                with z.open(info) as f:
                    _write_member(f, dest, info.file_size, archive, info.filename)


# ------------------------------------------------------------------ per-manifest fetch
def raw_dir(root: Path, name: str) -> Path:
    return Path(root) / "raw" / name


SOURCE = "source.json"


def record_source(root: Path, name: str, path: Path, by: str) -> Path:
    """Remember where NAME's inputs are (``fetch --from`` / ``prepare --from``), so that a later
    ``prepare`` (another size, another ``--video-every``) reads the same folder without being told."""
    sj = raw_dir(root, name) / SOURCE
    atomic.write_json(sj, {"path": str(Path(path).resolve()), "recorded_by": by,
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return sj


def recorded_source(root: Path, name: str) -> Path | None:
    """The folder or list recorded for NAME, None when none was; a broken record is one line."""
    sj = raw_dir(root, name) / SOURCE
    if not sj.is_file():
        return None
    try:
        rec = json.loads(sj.read_text(encoding="utf-8"))
        p = Path(rec["path"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReproError(f"{sj}: unreadable source record ({e.__class__.__name__}); run "
                         f"`repro data prepare {name} --from FOLDER` again") from None
    if not p.exists():
        raise ReproError(f"{p}: recorded source of '{name}' ({sj}) no longer exists; give another with "
                         f"`repro data prepare {name} --from FOLDER`")
    return p


def _marker(raw: Path, f: FileSpec) -> Path:
    return raw / f".{f.name}.extracted"


def fetch(m: Manifest, root: Path, from_path: Path | None = None, console: Console | None = None,
          seen: dict[str, tuple[str, int]] | None = None) -> list[str]:
    """Get every raw file of ``m`` into ``<root>/raw/<name>/``; returns human lines of what happened.
    ``seen`` receives (sha256, size) of every file whose sha256 the manifest does not pin."""
    console = console or Console(stderr=True)
    raw = raw_dir(root, m.name)
    notes: list[str] = []
    if m.packages:
        notes += fetch_packages(m, root, from_path if from_path is not None and from_path.is_dir() else None)
    if m.kind == "builtin":
        return notes + [f"{m.name}: built in from {'its package files' if m.packages else 'local data'} "
                        f"(run `repro data prepare {m.name}`)"]
    if m.kind == "local":
        if from_path is None:
            raise ReproError(f"{m.path}: '{m.name}' comes from your own files; "
                             f"run `repro data fetch {m.name} --from FOLDER_OR_LIST`")
        if not from_path.exists():
            raise ReproError(f"{from_path}: no such file or folder")
        sj = record_source(root, m.name, from_path, "fetch --from")
        return [f"{m.name}: will read {from_path.resolve()} (recorded in {sj})"]
    if from_path is not None and not from_path.exists():
        raise ReproError(f"{from_path}: no such file or folder")
    for f in m.files:
        dest = raw / f.name
        if dest.is_file() and (not f.sha256 or sha256_file(dest) == f.sha256):
            notes.append(f"{f.name}: already here")
        elif from_path is not None:
            src = from_path / f.name if from_path.is_dir() else from_path
            if from_path.is_file() and len(m.files) > 1 and from_path.name != f.name:
                src = from_path.parent / f.name
            copy_local(src, dest, f.sha256, console)
            notes.append(f"{f.name}: copied from {src}")
        elif f.url:
            download(f.url, dest, f.sha256, f.size, console)
            notes.append(f"{f.name}: downloaded from {f.url}")
        else:
            raise ReproError(f"{m.path}: file {f.name!r} has no URL (manual download: see the manifest's "
                             f"description); run `repro data fetch {m.name} --from PATH`")
        if not f.sha256:
            got = sha256_file(dest)
            if seen is not None:
                seen[f.name] = (got, dest.stat().st_size)
            notes.append(f"{f.name}: sha256 not pinned in the manifest; got {got} "
                         f"(`repro data fetch {m.name} --pin` pins it)")
        if f.extract and not _marker(raw, f).is_file():
            extract(dest, raw)
            _marker(raw, f).write_text(sha256_file(dest))
            notes.append(f"{f.name}: extracted into {raw}")
    return notes


def fetch_packages(m: Manifest, root: Path, from_dir: Path | None = None) -> list[str]:
    """Every ``[[packages]]`` file of ``m`` into ``<root>/raw/pypi/`` (by pip, or from ``from_dir``)."""

    if from_dir is not None and not from_dir.is_dir():
        raise ReproError(f"{from_dir}: no such folder")
    return [f"{p.file}: {pypi.fetch(p, root, from_dir)[1]}" for p in m.packages]


def verify_raw(m: Manifest, root: Path) -> list[str]:
    """Check the raw files (and package files) against the manifest's sha256s; one line per problem."""

    problems = []
    for p in m.packages:
        f = pypi.cache_dir(root) / p.file
        if not f.is_file():
            problems.append(f"{f}: missing (run `repro data fetch {m.name}`)")
        elif pypi.sha256_of(f) != p.sha256:
            problems.append(f"{f}: sha256 mismatch (expected {p.sha256})")
    raw = raw_dir(root, m.name)
    for f in m.files:
        p = raw / f.name
        if not p.is_file():
            problems.append(f"{p}: missing (run `repro data fetch {m.name}`)")
        elif f.sha256 and sha256_file(p) != f.sha256:
            problems.append(f"{p}: sha256 mismatch (expected {f.sha256})")
        elif f.size and p.stat().st_size != f.size:
            problems.append(f"{p}: size {p.stat().st_size}, manifest says {f.size}")
    return problems


def unpinned(m: Manifest, root: Path) -> list[str]:
    """One line per raw file present whose sha256 the manifest leaves empty: nothing checks its content."""
    raw = raw_dir(root, m.name)
    return [f"{raw / f.name}: sha256 not pinned in {m.path or m.name}, so its content is not checked; "
            f"`repro data fetch {m.name} --pin` pins the hash it sees" for f in m.files
            if not f.sha256 and (raw / f.name).is_file()]
