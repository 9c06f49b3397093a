"""Build the compiled modules: ``python -m ops.compiled build|status``.

``build`` compiles :data:`runtime.compiled.MODULES` with mypyc into the running
virtualenv's site-packages, in a directory named by the key of the sources
(:func:`runtime.compiled.source_key`), and does nothing when that build exists.  It works
on a copy of the packages, so that the build and its key describe the same bytes even if
a file is edited meanwhile, and it never writes into the source tree.  ``ops/setup-env``
runs it; when it cannot build (no C compiler, no Python headers, no mypyc, a failed
build) it says so in one line and exits 1, and the daemons run the pure modules.

``status`` prints the key of the sources and whether a build serves them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

from runtime.compiled import (
    MANIFEST,
    MODULES,
    builds_dir,
    matches,
    project_root,
    source_key,
    source_path,
)

__all__ = ["build", "built", "dependencies", "main", "missing_toolchain"]

#: The packages copied for a build: those of the compiled modules and all they import.
PACKAGES: Final = ("runtime", "objstore", "director", "metadata", "imapd")
#: Builds kept besides the new one (several checkouts may share one virtualenv).
KEEP: Final = 4
#: The setuptools driver run in the copy; arguments: group name, then module paths.
_DRIVER: Final = """\
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="objmail-compiled", script_args=["build_ext", "--build-lib", "lib", "--build-temp", "tmp"],
      ext_modules=mypycify(sys.argv[2:], opt_level="3", target_dir="c", group_name=sys.argv[1]))
"""


def missing_toolchain() -> str | None:
    """Return what is missing to build C extensions for this interpreter, or ``None``."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    include = Path(sysconfig.get_path("include"))
    if not (include / "Python.h").is_file():
        return f"no Python headers ({include}/Python.h)"
    try:
        import mypyc.build  # noqa: F401  (only to know it is there)
    except ImportError:
        return "no mypyc (pip install 'mypy[mypyc]')"
    return None


def _imported(root: Path, module: str, packages: Sequence[str]) -> set[str]:
    """The modules of *packages* that *module* imports (absolute imports; the project
    uses no others)."""
    tree = ast.parse(source_path(root, module).read_bytes())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] not in packages:
            continue
        # "from imapd.lexer import Frame" names a module and a class: keep the module.
        while parts and not source_path(root, ".".join(parts)).is_file():
            parts.pop()
        if parts:
            found.add(".".join(parts))
    return found


def dependencies(root: Path, modules: Iterable[str], packages: Sequence[str]) -> list[str]:
    """The modules of *packages* that *modules* import, directly or not, themselves
    excluded: what mypyc compiles them against."""
    listed = set(modules)
    seen: set[str] = set()
    todo = list(listed)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_imported(root, module, packages) - seen)
    return sorted(seen - listed)


def built(root: Path, builds: Path, modules: Sequence[str] = MODULES) -> bool:
    """Whether a build matches the sources under *root*, dependencies included."""
    manifest_file = builds / source_key(root, modules) / MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and matches(root, manifest)


def _copy_sources(root: Path, dest: Path, packages: Sequence[str]) -> None:
    for package in packages:
        shutil.copytree(root / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    # mypy reads its options (python_version, strictness) from here.
    if (root / "setup.cfg").is_file():
        shutil.copy2(root / "setup.cfg", dest / "setup.cfg")


def _prune(builds: Path, keep: str) -> None:
    """Drop all but the :data:`KEEP` newest builds besides *keep*, and stale temporaries."""
    others = sorted((p for p in builds.iterdir() if p.is_dir() and p.name != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    kept = 0
    for path in others:
        if path.name.startswith(".tmp-"):
            # A younger one may be another build still running.
            if time.time() - path.stat().st_mtime > 3600:
                shutil.rmtree(path, ignore_errors=True)
            continue
        kept += 1
        if kept > KEEP:
            shutil.rmtree(path, ignore_errors=True)


def build(root: Path, builds: Path, log: Path, *, force: bool = False,
          modules: Sequence[str] = MODULES, packages: Sequence[str] = PACKAGES,
          say: Callable[[str], None] = lambda message: None) -> str:
    """Build the compiled modules of the sources under *root* unless built; return the key.

    :param modules: the modules to compile (:data:`runtime.compiled.MODULES`).
    :param packages: the packages copied for the build: those of *modules* and what they
        import.
    :param say: told once the compiling starts (it takes minutes).

    :raises RuntimeError: when the toolchain is missing or the build fails (the reason,
        in one line; the compiler's output is in *log*).
    """
    key = source_key(root, modules)
    if built(root, builds, modules) and not force:
        return key
    missing = missing_toolchain()
    if missing is not None:
        raise RuntimeError(missing)
    builds.mkdir(parents=True, exist_ok=True)
    say("compiling the hot-path modules with mypyc (one to three minutes, once per change)")
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=builds))
    try:
        _copy_sources(root, work, packages)
        key = source_key(work, modules)  # the bytes actually compiled
        deps = dependencies(work, modules, packages)
        target = builds / key
        group = f"objmail_{key[:16]}"
        paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in modules]
        with log.open("w") as out:
            done = subprocess.run([sys.executable, "-c", _DRIVER, group, *paths], cwd=work,
                                  stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"mypyc build failed, see {log}")
        lib = work / "lib"
        suffix = importlib_suffix()
        files = {m: str(Path(*m.split(".")).with_suffix(suffix)) for m in modules}
        shared_file = f"{group}__mypyc{suffix}"
        for rel in [*files.values(), shared_file]:
            if not (lib / rel).is_file():
                raise RuntimeError(f"mypyc build made no {rel}, see {log}")
        manifest = {"key": key, "modules": files, "shared": f"{group}__mypyc",
                    "shared_file": shared_file, "deps": deps,
                    "deps_key": source_key(work, deps), "python": sys.version.split()[0],
                    "mypy": _mypy_version()}
        (lib / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if target.exists():
            # Forced, or built against dependencies that have changed since.
            shutil.rmtree(target)
        try:
            # Atomic: a process never sees half a build.
            os.rename(lib, target)
        except OSError:
            if not (target / MANIFEST).is_file():
                raise  # not a concurrent build of the same sources
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _prune(builds, key)
    return key


def importlib_suffix() -> str:
    """Return the file suffix of this interpreter's extension modules."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return str(suffix) if suffix else ".so"


def _mypy_version() -> str:
    from mypy.version import __version__
    return str(__version__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.compiled", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the modules unless a build matches the sources")
    b.add_argument("--force", action="store_true", help="rebuild even when a build matches")
    b.add_argument("--verbose", action="store_true", help="say when compiling starts and where the build is")
    sub.add_parser("status", help="print the sources' key and whether a build serves them")
    sub.add_parser("toolchain", help="say what is missing to build, if anything")
    args = parser.parse_args(argv)
    root, builds = project_root(), builds_dir()
    if args.command == "toolchain":
        missing = missing_toolchain()
        print(missing or "ok")
        return 0 if missing is None else 1
    if args.command == "status":
        key = source_key(root)
        ok = built(root, builds)
        print(f"{key} {'built' if ok else 'not built'} {builds / key}")
        return 0 if ok else 1
    log = builds / "build.log"
    try:
        builds.mkdir(parents=True, exist_ok=True)
        key = build(root, builds, log, force=args.force,
                    say=(lambda message: print(message, flush=True)) if args.verbose
                    else (lambda message: None))
    except (RuntimeError, OSError) as exc:
        print(f"compiled modules not built: {exc}; running pure Python", file=sys.stderr)
        return 1
    if args.verbose:
        print(f"compiled modules: {builds / key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
