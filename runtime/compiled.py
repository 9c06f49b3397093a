"""Compiled modules: load the mypyc build of the hot-path modules, only when it matches.

Theory of operation.  The modules in :data:`MODULES` are plain, typed Python and stay the
source of truth; ``python -m ops.compiled build`` (run by ``ops/setup-env``) compiles them
with mypyc into ``<venv site-packages>/objmail_compiled/<key>/``, where ``<key>`` is
:func:`source_key`: a SHA-256 over the exact bytes of every listed module, the interpreter's
cache tag and :data:`FORMAT`.  Nothing is ever written next to the sources, so an extension
module can never shadow an edited ``.py``.

:func:`install` (called by each package that holds a listed module, from its
``__init__``) puts a :class:`CompiledFinder` first on :data:`sys.meta_path`.  The first
time one of the listed modules is imported, the finder hashes the sources it is about to
shadow, looks for the build with that key, and loads its shared library.  Any mismatch (a
source edited since the build, another interpreter, no build, a library that will not
load) turns the finder off for the life of the process and every listed module is
imported from its ``.py``: all or nothing, because mypyc links the modules of one build
to each other directly.  ``OBJMAIL_PURE=1`` in the environment skips the finder
altogether.  This is the one place that reads the environment on its own: it has to
decide before any config exists, at import time.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Final

__all__ = [
    "FORMAT",
    "MANIFEST",
    "MODULES",
    "PURE_ENV",
    "CompiledFinder",
    "active_key",
    "builds_dir",
    "install",
    "matches",
    "project_root",
    "source_key",
]

#: The modules compiled with mypyc: the per-command parsers, renderers and MIME analysis.
#: Each is mypy-clean, monkeypatched by no test, and measured to pay (BENCHMARKS.md,
#: issue 13).
MODULES: Final = (
    "runtime.receivebuffer",
    "imapd.lexer",
    "imapd.grammar",
    "imapd.parser",
    "imapd.searchkeys",
    "imapd.sequence",
    "imapd.fetchatts",
    "imapd.response",
    "imapd.fetch",
    "imapd.bodies",
    "objstore.protocol",
    "objstore.replies",
    "metadata.mimetree",
    "metadata.splitter",
    "metadata.bodystructure",
    "metadata.envelope",
    "metadata.rfc822",
    "metadata.imapstring",
    "metadata.searchtext",
    "metadata.sections",
    "metadata.sortkeys",
)
#: Bumped whenever the layout of a build changes, so that old builds are never loaded.
FORMAT: Final = "1"
#: Set to ``1`` to import every module from its ``.py`` (CI's pure run, debugging).
PURE_ENV: Final = "OBJMAIL_PURE"
#: The file, in a build's directory, naming the key and the extension file of each module.
MANIFEST: Final = "manifest.json"

_log = logging.getLogger(__name__)


def project_root() -> Path:
    """Return the directory holding the packages this module was imported with."""
    return Path(__file__).resolve().parent.parent


def builds_dir() -> Path:
    """Return where builds live: a directory in the running virtualenv's site-packages."""
    return Path(sysconfig.get_path("platlib")) / "objmail_compiled"


def source_path(root: Path, module: str) -> Path:
    """Return the ``.py`` file of a dotted *module* name under *root* (a package's
    ``__init__.py``)."""
    path = root.joinpath(*module.split("."))
    package = path / "__init__.py"
    return package if package.is_file() else path.with_suffix(".py")


def matches(root: Path, manifest: Mapping[str, object]) -> bool:
    """Whether the modules a build was compiled against are unchanged under *root*.

    mypyc compiles a listed module against the types of what it imports, so a build also
    records the project modules its listed ones import, directly or not, and their key
    (``deps``, ``deps_key``): a changed return type there must not meet stale code either.
    """
    deps = manifest.get("deps")
    if not isinstance(deps, list):
        return False
    try:
        return source_key(root, [str(d) for d in deps]) == manifest.get("deps_key")
    except OSError:
        return False  # a dependency is gone


def source_key(root: Path, modules: Iterable[str] = MODULES) -> str:
    """Return the key of a build of *modules* as found under *root*, for this interpreter.

    :raises OSError: when a source cannot be read.
    """
    digest = hashlib.sha256()
    digest.update(f"objmail-compiled {FORMAT} {sys.implementation.cache_tag}\n".encode())
    for module in sorted(modules):
        data = source_path(root, module).read_bytes()
        # The name and length frame each file, so moving bytes between files changes the key.
        digest.update(f"{module} {len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


class CompiledFinder(importlib.abc.MetaPathFinder):
    """Serve the listed modules from the build matching the sources under *root*, or none.

    :param root: the directory holding the source packages (:func:`project_root`).
    :param builds: the directory holding the builds (:func:`builds_dir`).
    :param modules: the module names a build may serve.
    """

    def __init__(self, root: Path, builds: Path, modules: Sequence[str] = MODULES) -> None:
        self.root = root
        self.builds = builds
        self.modules = frozenset(modules)
        #: ``None`` until the first listed import; then the build's files, or {} when off.
        self._files: dict[str, Path] | None = None
        #: The key of the build in use, once one is.
        self.key: str | None = None

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.modules:
            return None
        # Serve only the tree that was hashed: a package imported from elsewhere (another
        # checkout on sys.path) gets its own sources.
        package_dir = self.root.joinpath(*fullname.split(".")[:-1])
        if path is None or not any(Path(entry).resolve() == package_dir for entry in path):
            return None
        files = self._load()
        if fullname not in files:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(files[fullname]))
        return importlib.util.spec_from_file_location(fullname, files[fullname], loader=loader)

    def _load(self) -> dict[str, Path]:
        """Find, check and load the matching build once; return its module files or {}."""
        if self._files is None:
            self._files = {}
            try:
                self._files = self._open_build()
            except (OSError, ImportError, ValueError, KeyError) as exc:
                # One line, then the pure modules: a broken build must never stop a daemon.
                _log.warning("compiled modules unusable (%s); running pure Python", exc)
        return self._files

    def _open_build(self) -> dict[str, Path]:
        key = source_key(self.root, self.modules)
        build = self.builds / key
        if not (build / MANIFEST).is_file():
            _log.info("no compiled build for these sources; running pure Python "
                      "(build: python -m ops.compiled build)")
            return {}
        manifest = json.loads((build / MANIFEST).read_text())
        if manifest["key"] != key or set(manifest["modules"]) != self.modules:
            raise ValueError(f"manifest of {build} does not match its key")
        if not matches(self.root, manifest):
            _log.info("a module the compiled build depends on changed; running pure Python "
                      "(build: python -m ops.compiled build)")
            return {}
        files = {name: build / rel for name, rel in manifest["modules"].items()}
        shared = manifest["shared"]
        # Load mypyc's shared library now, so that a library that will not load (missing
        # symbol, other architecture) sends us to the pure modules instead of failing the
        # import of a listed module halfway.
        self._load_shared(shared, build / manifest["shared_file"])
        self.key = key
        return files

    @staticmethod
    def _load_shared(name: str, file: Path) -> None:
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(
            name, file, loader=importlib.machinery.ExtensionFileLoader(name, str(file)))
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {file}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module


def install() -> None:
    """Put the compiled-module finder first on :data:`sys.meta_path`, once per process.

    Does nothing when ``OBJMAIL_PURE`` is set to anything but ``0`` or empty.
    """
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return
    if any(isinstance(finder, CompiledFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, CompiledFinder(project_root(), builds_dir()))


def active_key() -> str | None:
    """Return the key of the build serving this process's listed modules, or ``None``."""
    for finder in sys.meta_path:
        if isinstance(finder, CompiledFinder):
            return finder.key
    return None
