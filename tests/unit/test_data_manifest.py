"""Manifests: every shipped one parses; bad ones fail with one line naming the file and the field."""
from __future__ import annotations


import pytest
from click.testing import CliRunner

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

from support.data import cli
from repro.data import manifest
from repro.errors import ReproError

REQUIRED = ["lfw", "cat-heads", "daimler-pedestrians", "imagenet-negatives", "youtube-frames", "mini", "pypi-faces"]


def test_shipped_manifests_parse():
    names = {p.stem for p in manifest.available()}
    assert set(REQUIRED) <= names
    for n in names:
        m = manifest.load(n)
        assert m.name == n and m.licence and m.citation
        assert m.splits


def test_manifests_ship_inside_the_package():
    """A wheel carries the manifests (package data); the root's data_manifests/ points there."""
    import repro

    assert manifest.BUILTIN_DIR == manifest.Path(repro.__file__).resolve().parent / "data_manifests"
    assert (manifest.BUILTIN_DIR / "mini.toml").is_file() and (manifest.BUILTIN_DIR / "pypi-faces.toml").is_file()


def test_your_manifests_come_first_and_the_shipped_ones_stay(monkeypatch, tmp_path):
    """$REPRO_MANIFESTS adds manifests and may override a shipped one by name; the rest stay."""
    own = tomllib.loads((manifest.BUILTIN_DIR / "mini.toml").read_text())
    text = (manifest.BUILTIN_DIR / "mini.toml").read_text().replace("frames = 4000", "frames = 100")
    (tmp_path / "mini.toml").write_text(text)
    (tmp_path / "mine.toml").write_text(GOOD.replace('name = "x"', 'name = "mine"'))
    monkeypatch.setenv("REPRO_MANIFESTS", str(tmp_path))
    assert manifest.load("mini").prepare.extra["frames"] == 100 != own["prepare"]["frames"]
    assert manifest.load("lfw").path.parent == manifest.BUILTIN_DIR
    names = [p.stem for p in manifest.available()]
    assert "mine" in names and "lfw" in names and names.count("mini") == 1


GOOD = """name = "x"\nrole = "test"\nconcept = "faces"\nkind = "local"\ndescription = "d"\nlicence = "l"\ncitation = "c"
[prepare]\nsize = [8, 8]\n[[prepare.sources]]\nsplit = "test"\nlabel = 1\nglob = "*.png"\n"""


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s.replace('licence = "l"\n', ""), "missing field 'licence'"),
    (lambda s: s.replace('role = "test"', 'role = "train"'), "field 'role'"),
    (lambda s: s.replace('size = [8, 8]', 'size = [8]'), "field 'size'"),
    (lambda s: s.replace('label = 1', 'label = "one"'), "field 'label' must be int"),
    (lambda s: s.replace('concept = "faces"\n', ""), "'concept' is required"),
    (lambda s: s.replace('kind = "local"', 'kind = "download"'), "[[files]]"),
    (lambda s: s + "[[files]]\nname = 'a.zip'\nsha256 = 'xyz'\n", "64 hex"),
    (lambda s: s.replace('name = "x"', 'name = "y"'), "file is named"),
    (lambda s: s + "this is not toml [", "invalid TOML"),
])
def test_bad_manifest_one_line(tmp_path, edit, needle):
    p = tmp_path / "x.toml"
    p.write_text(edit(GOOD))
    with pytest.raises(ReproError) as ei:
        manifest.load(str(p))
    msg = ei.value.message
    assert needle in msg and str(p) in msg and "\n" not in msg


def test_good_manifest_and_cli_errors(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text(GOOD)
    assert manifest.load(str(p)).prepare.size == (8, 8)
    r = CliRunner().invoke(cli, ["data", "prepare", str(tmp_path / "nope.toml"), "--root", str(tmp_path)])
    assert r.exit_code != 0 and "nope.toml" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["data", "verify", "no-such-dataset", "--root", str(tmp_path)])
    assert r.exit_code != 0 and "no such manifest" in r.output


def test_list_command(tmp_path):
    r = CliRunner().invoke(cli, ["data", "list", "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for n in REQUIRED:
        assert n in r.output


def test_registered_in_repro_cli():
    from repro.cli import cli as repro_cli

    assert "data" in repro_cli.commands
