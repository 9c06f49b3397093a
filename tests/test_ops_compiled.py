"""Building the compiled modules: a real mypyc build of a small package, loaded by the
finder while it matches the sources and ignored once a source is edited."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ops.compiled import build, missing_toolchain
from runtime.compiled import MANIFEST, source_key

pytestmark = pytest.mark.system  # runs mypy and the C compiler

MODS = ("pkgy.calc",)
SOURCE = textwrap.dedent("""\
    from pkgy.start import start

    def total(values: list[int]) -> int:
        acc = start()
        for v in values:
            acc += v
        return acc
    """)


def make_tree(root: Path) -> Path:
    (root / "pkgy").mkdir(parents=True)
    (root / "pkgy" / "__init__.py").write_text("")
    (root / "pkgy" / "calc.py").write_text(SOURCE)
    (root / "pkgy" / "start.py").write_text("def start() -> int:\n    return 0\n")
    return root


def import_in_child(root: Path, builds: Path) -> dict[str, object]:
    """Import ``pkgy.calc`` in a fresh interpreter with a finder over *root* and *builds*."""
    code = textwrap.dedent(f"""\
        import json, sys
        from pathlib import Path
        from runtime.compiled import CompiledFinder
        finder = CompiledFinder(Path({str(root)!r}), Path({str(builds)!r}), {MODS!r})
        sys.meta_path.insert(0, finder)
        sys.path.insert(0, {str(root)!r})
        import pkgy.calc
        print(json.dumps({{"file": pkgy.calc.__file__, "total": pkgy.calc.total([1, 2, 3]),
                           "key": finder.key}}))
        """)
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_build_is_loaded_while_it_matches(tmp_path: Path) -> None:
    """A build serves the module until its source, or a module it imports, changes; a
    second build call with the same sources does nothing, one after a change rebuilds."""
    if missing_toolchain() is not None:
        pytest.skip("no C toolchain or mypyc here")
    root = make_tree(tmp_path / "src")
    builds = tmp_path / "builds"
    key = build(root, builds, tmp_path / "build.log", modules=MODS, packages=("pkgy",))
    assert key == source_key(root, MODS)
    manifest = json.loads((builds / key / MANIFEST).read_text())
    assert manifest["key"] == key
    assert manifest["deps"] == ["pkgy.start"]
    # Nothing was written next to the sources.
    assert sorted(p.name for p in (root / "pkgy").iterdir()) == [
        "__init__.py", "calc.py", "start.py"]

    loaded = import_in_child(root, builds)
    assert loaded["key"] == key
    assert str(loaded["file"]).startswith(str(builds / key))
    assert loaded["total"] == 6

    before = (builds / key / MANIFEST).stat().st_mtime_ns
    assert build(root, builds, tmp_path / "build.log", modules=MODS, packages=("pkgy",)) == key
    assert (builds / key / MANIFEST).stat().st_mtime_ns == before

    # The dependency edited: the build is stale though calc.py is not.
    (root / "pkgy" / "start.py").write_text("def start() -> int:\n    return 10\n")
    stale = import_in_child(root, builds)
    assert stale["key"] is None and stale["total"] == 16
    assert build(root, builds, tmp_path / "build.log", modules=MODS, packages=("pkgy",)) == key
    rebuilt = import_in_child(root, builds)
    assert rebuilt["key"] == key and rebuilt["total"] == 16

    (root / "pkgy" / "calc.py").write_text(SOURCE.replace("acc = start()", "acc = 100"))
    edited = import_in_child(root, builds)
    assert edited["key"] is None
    assert edited["file"] == str(root / "pkgy" / "calc.py")
    assert edited["total"] == 106


def test_failed_build_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    """A module mypyc refuses fails the build with a one-line reason naming the log, and
    leaves no build behind."""
    if missing_toolchain() is not None:
        pytest.skip("no C toolchain or mypyc here")
    root = make_tree(tmp_path / "src")
    (root / "pkgy" / "calc.py").write_text("class Name(str):\n    pass\n")
    builds = tmp_path / "builds"
    log = tmp_path / "build.log"
    with pytest.raises(RuntimeError, match="mypyc build failed") as info:
        build(root, builds, log, modules=MODS, packages=("pkgy",))
    assert "\n" not in str(info.value)
    assert "error" in log.read_text()
    assert [p.name for p in builds.iterdir()] == []
