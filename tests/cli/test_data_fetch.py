"""fetch: HTTP download with resume and sha256, local --from, safe extraction, truncated archives."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from support.data import cli
from repro.data.fetch import download, extract
from repro.errors import ReproError
from support.data import Server, make_images, write_manifest


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _tgz(tmp: Path, name: str = "set.tar.gz", n: int = 6) -> Path:
    src = tmp / "src"
    make_images(src / "pics" / "pos", n // 2, seed=1, prefix="p")
    make_images(src / "pics" / "neg", n - n // 2, seed=2, prefix="n")
    out = tmp / "serve" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as t:
        t.add(src / "pics", arcname="pics")
    return out


def test_download_resume_and_sha(tmp_path):
    arc = _tgz(tmp_path)
    big = tmp_path / "serve" / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    with Server(tmp_path / "serve") as s:
        s.cut_next()
        dest = tmp_path / "dl" / "big.bin"
        with pytest.raises(ReproError, match="run fetch again to resume"):
            download(s.url("big.bin"), dest, _sha(big))
        part = dest.with_name("big.bin.part")
        assert part.exists() and 0 < part.stat().st_size < big.stat().st_size and not dest.exists()
        download(s.url("big.bin"), dest, _sha(big))
        assert dest.read_bytes() == big.read_bytes() and not part.exists()
        assert s.requests[-1][1] == f"bytes={(3 << 20) // 2}-"  # resumed with a Range request
        # wrong checksum: error names the URL, no file under the final name
        with pytest.raises(ReproError, match="sha256 mismatch") as ei:
            download(s.url(arc.name), tmp_path / "dl" / arc.name, "0" * 64)
        assert "\n" not in ei.value.message and not (tmp_path / "dl" / arc.name).exists()
        with pytest.raises(ReproError, match="HTTP 404"):
            download(s.url("missing.zip"), tmp_path / "dl" / "missing.zip")


def test_fetch_cli_http_then_prepare(tmp_path):
    arc = _tgz(tmp_path)
    root = tmp_path / "root"
    with Server(tmp_path / "serve") as s:
        m = write_manifest(tmp_path / "toy.toml", "toy",
                           files=[{"name": arc.name, "url": s.url(arc.name), "sha256": _sha(arc), "extract": True}],
                           sources=[{"split": "test", "label": 1, "glob": "pics/pos/*.png"},
                                    {"split": "test", "label": 0, "glob": "pics/neg/*.png"}],
                           expected="images = 6\npositives = 3\nnegatives = 3")
        r = CliRunner().invoke(cli, ["data", "fetch", str(m), "--root", str(root)])
        assert r.exit_code == 0, r.output
    assert (root / "raw" / "toy" / "pics" / "pos" / "p000.png").is_file()
    r = CliRunner().invoke(cli, ["data", "prepare", str(m), "--root", str(root)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["data", "verify", str(m), "--root", str(root)])
    assert r.exit_code == 0 and "all checks passed" in r.output, r.output
    # fetch again: no network needed, file already here
    r = CliRunner().invoke(cli, ["data", "fetch", str(m), "--root", str(root)])
    assert r.exit_code == 0 and "already here" in r.output


def test_fetch_from_local_and_bad_checksum(tmp_path):
    arc = _tgz(tmp_path)
    root = tmp_path / "root"
    m = write_manifest(tmp_path / "toy.toml", "toy",
                       files=[{"name": arc.name, "url": "", "sha256": _sha(arc), "extract": True}],
                       sources=[{"split": "test", "label": 1, "glob": "pics/**/*.png"}])
    r = CliRunner().invoke(cli, ["data", "fetch", str(m), "--root", str(root)])
    assert r.exit_code != 0 and "--from" in r.output
    r = CliRunner().invoke(cli, ["data", "fetch", str(m), "--root", str(root), "--from", str(arc.parent)])
    assert r.exit_code == 0, r.output
    assert len(list((root / "raw" / "toy" / "pics").rglob("*.png"))) == 6
    m2 = write_manifest(tmp_path / "toy2.toml", "toy2",
                        files=[{"name": arc.name, "url": "", "sha256": "1" * 64, "extract": True}],
                        sources=[{"split": "test", "label": 1, "glob": "pics/**/*.png"}])
    r = CliRunner().invoke(cli, ["data", "fetch", str(m2), "--root", str(root), "--from", str(arc)])
    assert r.exit_code == 1 and "sha256 mismatch" in r.output and "Traceback" not in r.output
    assert not (root / "raw" / "toy2" / arc.name).exists()
    r = CliRunner().invoke(cli, ["data", "fetch", str(m2), "--root", str(root), "--from", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "nowhere: no such file" in r.output


def _tar_with(tmp: Path, name: str, *adds) -> Path:
    p = tmp / name
    with tarfile.open(p, "w:gz") as t:
        ok = tarfile.TarInfo("ok/file.txt")
        ok.size = 2
        t.addfile(ok, io.BytesIO(b"hi"))
        for add in adds:
            add(t)
    return p


def _file(name: str, data: bytes = b"x"):
    def add(t):
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    return add


def _link(name: str, target: str, kind=tarfile.SYMTYPE):
    def add(t):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.linkname = target
        t.addfile(ti)
    return add


@pytest.mark.parametrize("add, needle", [
    (_file("../evil.txt"), "'..'"),
    (_file("/tmp/evil.txt"), "absolute path"),
    (_file("a/../../evil.txt"), "'..'"),
    (_link("ok/link", "../../etc/passwd"), "points outside"),
    (_link("ok/link", "/etc/passwd"), "points outside"),
    (_link("ok/hard", "../outside", tarfile.LNKTYPE), "points outside"),
])
def test_tar_escapes_rejected(tmp_path, add, needle):
    arc = _tar_with(tmp_path, "evil.tar.gz", add)
    target = tmp_path / "out"
    with pytest.raises(ReproError) as ei:
        extract(arc, target)
    assert needle in ei.value.message and str(arc) in ei.value.message
    assert not (tmp_path / "evil.txt").exists()
    assert list(target.iterdir()) == []  # nothing half-extracted


@pytest.mark.parametrize("entries", [
    # each link looks harmless by itself; chained they point above the folder
    [_link("a", "."), _link("b", "a/.."), _link("c", "b/.."), _file("c/evil.txt")],
    [_link("a", "."), _link("b", "a/.."), _file("b/evil.txt")],
    [_link("d", "."), _link("e", "d/../d/.."), _link("f", "e/..")],
])
def test_tar_link_chains_rejected(tmp_path, entries):
    (tmp_path / "box").mkdir()
    arc = _tar_with(tmp_path / "box", "chain.tar", *entries)
    target = tmp_path / "box" / "out"
    with pytest.raises(ReproError, match="outside the target folder"):
        extract(arc, target)
    assert not (tmp_path / "box" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert list(target.iterdir()) == []


def test_tar_internal_links_allowed(tmp_path):
    arc = _tar_with(tmp_path, "fine.tar", _link("ok/alias.txt", "file.txt"))
    extract(arc, tmp_path / "out")
    assert (tmp_path / "out" / "ok" / "alias.txt").read_text() == "hi"


def test_zip_escapes_and_truncation(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("good.txt", "ok")
        f.writestr("../evil.txt", "bad")
    with pytest.raises(ReproError, match="'..'"):
        extract(z, tmp_path / "out")
    zl = tmp_path / "link.zip"
    with zipfile.ZipFile(zl, "w") as f:
        info = zipfile.ZipInfo("sub/l")
        info.external_attr = (0o120777 << 16)
        f.writestr(info, "../../outside")
    with pytest.raises(ReproError, match="points outside"):
        extract(zl, tmp_path / "out2")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("d/a.bin", os.urandom(200_000))
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ReproError, match="truncated or corrupt") as ei:
        extract(cut, tmp_path / "out3")
    assert "\n" not in ei.value.message


@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz"),
                                          (".tar", "w")])
def test_truncated_tar(tmp_path, suffix, mode):
    p = tmp_path / f"a{suffix}"
    with tarfile.open(p, mode) as t:
        data = os.urandom(300_000)
        ti = tarfile.TarInfo("d/a.bin")
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    extract(p, tmp_path / "whole")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    target = tmp_path / "out"
    with pytest.raises(ReproError, match="truncated") as ei:
        extract(cut, target)
    assert str(cut) in ei.value.message
    assert list(target.iterdir()) == []


def test_two_archives_sharing_a_folder_merge(tmp_path):
    for i in range(2):
        with tarfile.open(tmp_path / f"a{i}.tar", "w") as t:
            ti = tarfile.TarInfo(f"shared/f{i}.txt")
            ti.size = 1
            t.addfile(ti, io.BytesIO(b"x"))
        extract(tmp_path / f"a{i}.tar", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "shared").iterdir()) == ["f0.txt", "f1.txt"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["shared"]


def test_tar_data_filter_is_a_second_line_of_defence(tmp_path, monkeypatch):
    """With our own link check switched off, tarfile's data filter still refuses a link out of the
    folder, and nothing is left behind."""
    import repro.data.fetch as fetch_mod

    if fetch_mod._DATA_FILTER is None:
        pytest.skip("this Python's tarfile has no data filter")
    monkeypatch.setattr(fetch_mod, "_check_link", lambda rel, target, archive, name, hard: rel)
    monkeypatch.setattr(fetch_mod, "_inside", lambda path, root, archive, name: path)
    arc = _tar_with(tmp_path, "evil.tar.gz", _link("ok/link", "/etc/passwd"))
    with pytest.raises(ReproError, match="refused by tarfile's data filter") as ei:
        extract(arc, tmp_path / "out")
    assert "\n" not in ei.value.message and list((tmp_path / "out").iterdir()) == []


def _unpinned(tmp_path: Path, name: str = "dl") -> tuple[Path, Path]:
    arc = _tgz(tmp_path)
    m = write_manifest(tmp_path / f"{name}.toml", name,
                       files=[{"name": arc.name, "url": "", "sha256": "", "size": 0, "extract": True}],
                       sources=[{"split": "test", "label": 1, "glob": "pics/**/*.png"}])
    m.write_text(m.read_text().replace('sha256 = ""', 'sha256 = ""   # not pinned yet'))
    return arc, m


def test_fetch_pin_writes_your_manifest_copy_and_verify_checks_it(tmp_path, monkeypatch):
    monkeypatch.delenv("REPRO_MANIFESTS", raising=False)
    arc, m = _unpinned(tmp_path)
    root = tmp_path / "root"
    r = CliRunner().invoke(cli, ["data", "fetch", str(m), "--from", str(arc), "--root", str(root)])
    assert r.exit_code == 0 and "not pinned" in r.output and "--pin" in r.output
    assert CliRunner().invoke(cli, ["data", "prepare", str(m), "--root", str(root)]).exit_code == 0
    r = CliRunner().invoke(cli, ["data", "verify", str(m), "--root", str(root)])
    assert r.exit_code == 0, r.output
    assert "sha256 not pinned" in r.output and "1 file(s) unpinned" in r.output
    r = CliRunner().invoke(cli, ["data", "fetch", str(m), "--from", str(arc), "--root", str(root), "--pin"])
    assert r.exit_code == 0, r.output
    copy = root / "manifests" / "dl.toml"
    assert f"pinned in {copy}" in r.output.replace("\n", "")
    text = copy.read_text()
    assert f'sha256 = "{_sha(arc)}"' in text and f"size = {arc.stat().st_size}" in text
    assert 'description = "test data"' in text and "not pinned yet" not in text
    assert 'sha256 = ""' in m.read_text()  # the manifest you gave stays as it was
    # by name, the copy under ROOT/manifests is found, and verify now checks the hash
    r = CliRunner().invoke(cli, ["data", "verify", "dl", "--root", str(root)])
    assert r.exit_code == 0 and "unpinned" not in r.output, r.output
    raw = root / "raw" / "dl" / arc.name
    data = raw.read_bytes()
    raw.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    r = CliRunner().invoke(cli, ["data", "verify", "dl", "--root", str(root)])
    assert r.exit_code == 1 and "sha256 mismatch" in r.output


def test_fetch_pin_into_repro_manifests(tmp_path, monkeypatch):
    arc, m = _unpinned(tmp_path)
    own = tmp_path / "own"
    own.mkdir()
    monkeypatch.setenv("REPRO_MANIFESTS", str(own))
    root = tmp_path / "root"
    r = CliRunner().invoke(cli, ["data", "fetch", str(m), "--from", str(arc), "--root", str(root), "--pin"])
    assert r.exit_code == 0, r.output
    assert _sha(arc) in (own / "dl.toml").read_text() and not (root / "manifests").exists()
    r = CliRunner().invoke(cli, ["data", "fetch", "dl", "--from", str(arc), "--root", str(root), "--pin"])
    assert r.exit_code == 0 and "pinned already" in r.output, r.output
    loc = write_manifest(tmp_path / "loc.toml", "loc", kind="local", sources=[{"split": "test", "label": 1, "glob": "*"}])
    r = CliRunner().invoke(cli, ["data", "fetch", str(loc), "--from", str(tmp_path), "--root", str(root), "--pin"])
    assert r.exit_code == 1 and r.output.startswith("Error: --pin:") and "Traceback" not in r.output
