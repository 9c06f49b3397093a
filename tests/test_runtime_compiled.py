"""The compiled-module finder: a build serves the listed modules only when it matches the
sources byte for byte; anything else means the pure-Python modules."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from runtime import compiled
from runtime.compiled import MANIFEST, MODULES, CompiledFinder, source_key

ROOT = compiled.project_root()
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def make_tree(root: Path) -> Path:
    """A package ``pkgx`` with two listed modules under *root*."""
    (root / "pkgx").mkdir(parents=True)
    (root / "pkgx" / "__init__.py").write_text("")
    (root / "pkgx" / "one.py").write_text("X = 1\n")
    (root / "pkgx" / "two.py").write_text("Y = 2\n")
    (root / "pkgx" / "dep.py").write_text("def f() -> int:\n    return 1\n")
    return root


def fake_build(root: Path, builds: Path, shared: bytes = b"not an ELF file") -> Path:
    """A build of the tree under *root* (``pkgx.two`` importing ``pkgx.dep``) whose files
    are not real libraries."""
    build = builds / source_key(root, MODS)
    (build / "pkgx").mkdir(parents=True)
    (build / "objmail_x__mypyc.so").write_bytes(shared)
    manifest = {"key": source_key(root, MODS),
                "modules": {"pkgx.one": "pkgx/one.so", "pkgx.two": "pkgx/two.so"},
                "shared": "objmail_x__mypyc", "shared_file": "objmail_x__mypyc.so",
                "deps": ["pkgx", "pkgx.dep"], "deps_key": source_key(root, ["pkgx", "pkgx.dep"])}
    (build / MANIFEST).write_text(json.dumps(manifest))
    return build


MODS = ("pkgx.one", "pkgx.two")


def test_key_changes_with_one_byte(tmp_path: Path) -> None:
    """The key follows the bytes of every listed source, not where the tree lives."""
    a = make_tree(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert source_key(a, MODS) == source_key(b, MODS)
    (b / "pkgx" / "two.py").write_text("Y = 3\n")
    assert source_key(a, MODS) != source_key(b, MODS)


def test_key_frames_each_file(tmp_path: Path) -> None:
    """Moving bytes from one source to the next changes the key."""
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    (a / "pkgx" / "one.py").write_text("X = 1\nY")
    (a / "pkgx" / "two.py").write_text(" = 2\n")
    (b / "pkgx" / "one.py").write_text("X = 1\n")
    (b / "pkgx" / "two.py").write_text("Y = 2\n")
    assert source_key(a, MODS) != source_key(b, MODS)


def test_no_build_means_pure(tmp_path: Path) -> None:
    """Without a build for the sources the finder serves nothing."""
    root = make_tree(tmp_path / "src")
    finder = CompiledFinder(root, tmp_path / "builds", MODS)
    assert finder.find_spec("pkgx.one", [str(root / "pkgx")]) is None
    assert finder.key is None


def test_edited_source_means_pure(tmp_path: Path) -> None:
    """A build made before a source was edited is never used."""
    root = make_tree(tmp_path / "src")
    fake_build(root, tmp_path / "builds")
    (root / "pkgx" / "one.py").write_text("X = 10\n")
    finder = CompiledFinder(root, tmp_path / "builds", MODS)
    assert finder.find_spec("pkgx.one", [str(root / "pkgx")]) is None
    assert finder.key is None


def test_edited_dependency_means_pure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A build is not used once a module it was compiled against changed, though the
    listed modules did not: its types may have."""
    root = make_tree(tmp_path / "src")
    fake_build(root, tmp_path / "builds")
    (root / "pkgx" / "dep.py").write_text("def f() -> str:\n    return '1'\n")
    finder = CompiledFinder(root, tmp_path / "builds", MODS)
    with caplog.at_level(logging.INFO, logger="runtime.compiled"):
        assert finder.find_spec("pkgx.one", [str(root / "pkgx")]) is None
    assert finder.key is None
    assert "depends on changed" in caplog.text


def test_unloadable_build_logs_once_and_means_pure(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A matching build whose library does not load is logged in one line; the pure
    modules are imported, for every listed module."""
    root = make_tree(tmp_path / "src")
    fake_build(root, tmp_path / "builds")
    finder = CompiledFinder(root, tmp_path / "builds", MODS)
    with caplog.at_level(logging.WARNING, logger="runtime.compiled"):
        assert finder.find_spec("pkgx.one", [str(root / "pkgx")]) is None
        assert finder.find_spec("pkgx.two", [str(root / "pkgx")]) is None
    assert len(caplog.records) == 1
    assert "running pure Python" in caplog.records[0].getMessage()
    assert finder.key is None


def test_other_tree_and_unlisted_modules_are_not_served(tmp_path: Path) -> None:
    """The finder looks at listed modules of the tree it hashed, nothing else."""
    root = make_tree(tmp_path / "src")
    other = make_tree(tmp_path / "other")
    fake_build(root, tmp_path / "builds")
    finder = CompiledFinder(root, tmp_path / "builds", MODS)
    assert finder.find_spec("pkgx.one", [str(other / "pkgx")]) is None
    assert finder.find_spec("pkgx", None) is None
    assert finder.find_spec("json", None) is None
    # Neither call looked at the (unloadable) build.
    assert finder._files is None


def test_no_extension_module_shadows_a_source() -> None:
    """No extension file sits next to a listed module's source, where Python would prefer
    it to the ``.py`` whatever the source says (builds live in site-packages)."""
    for module in MODULES:
        source = compiled.source_path(ROOT, module)
        assert source.is_file()
        strays = [p.name for p in source.parent.glob(source.stem + ".*.so")]
        assert not strays, f"{module}: {strays}"


def imported_files(pure: bool) -> dict[str, str]:
    """Where a fresh interpreter imports the listed modules from."""
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    code = ("import importlib, json, sys\n"
            f"mods = {list(MODULES)!r}\n"
            "print(json.dumps({m: importlib.import_module(m).__file__ for m in mods}))\n")
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                          capture_output=True, text=True)
    files: dict[str, str] = json.loads(done.stdout)
    return files


@pytest.mark.system  # starts an interpreter
def test_pure_switch_imports_every_source() -> None:
    """``OBJMAIL_PURE=1`` imports every listed module from its ``.py``."""
    files = imported_files(pure=True)
    assert all(f == str(compiled.source_path(ROOT, m)) for m, f in files.items()), files


@pytest.mark.system  # starts an interpreter
def test_build_serves_the_listed_modules() -> None:
    """When a build matches the sources (always under ``./ops/test``'s compiled run), a fresh
    interpreter imports every listed module from it."""
    from ops.compiled import built

    build = compiled.builds_dir() / source_key(ROOT)
    if not built(ROOT, compiled.builds_dir()):
        if os.environ.get("OBJMAIL_EXPECT_COMPILED") == "1":
            pytest.fail(f"./ops/test expected a compiled build at {build}")
        pytest.skip("no compiled build for these sources (python -m ops.compiled build)")
    files = imported_files(pure=False)
    for module, file in files.items():
        assert file.startswith(str(build) + os.sep) and file.endswith(SUFFIX), (module, file)


def test_this_process_runs_what_ops_test_asked_for() -> None:
    """Under ``./ops/test`` the test process itself runs the modules of the pass: compiled
    in the compiled run, so the whole suite exercises them, pure in the pure one."""
    import imapd.parser

    file = imapd.parser.__file__
    assert file is not None
    if os.environ.get("OBJMAIL_EXPECT_COMPILED") == "1":
        assert compiled.active_key() == source_key(ROOT)
        assert file.endswith(SUFFIX)
    elif os.environ.get(compiled.PURE_ENV, "") not in ("", "0"):
        assert compiled.active_key() is None
        assert file == str(compiled.source_path(ROOT, "imapd.parser"))
    else:
        pytest.skip("not under ./ops/test")
