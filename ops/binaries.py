"""Finding the system binaries the local cluster runs, installing them when we may.

The dev cluster is built from Debian's packages.  When a binary is missing and we
run as root, the package is installed with apt-get; otherwise we stop with a
message naming the package, so the user knows exactly what to install.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class MissingBinary(RuntimeError):
    """A program the cluster needs is not installed and could not be installed."""


@dataclass(frozen=True)
class Binary:
    """A program and the Debian package that ships it."""

    name: str
    package: str
    #: Extra places to look besides $PATH (PostgreSQL keeps its server off $PATH).
    globs: tuple[str, ...] = ()


POSTGRES = Binary("postgres", "postgresql", ("/usr/lib/postgresql/*/bin",))
INITDB = Binary("initdb", "postgresql", ("/usr/lib/postgresql/*/bin",))
PG_ISREADY = Binary("pg_isready", "postgresql-client", ("/usr/lib/postgresql/*/bin",))
REDIS_SERVER = Binary("redis-server", "redis-server")
REDIS_CLI = Binary("redis-cli", "redis-tools")
OPENSSL = Binary("openssl", "openssl")


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,): prefer the newest major version.
    parts = [p for p in Path(path).parts if p.isdigit()]
    return tuple(int(p) for p in parts)


def locate(binary: Binary, search_path: str | None = None) -> str | None:
    """Return the full path of ``binary`` or None."""
    found = shutil.which(binary.name, path=search_path)
    if found:
        return found
    for pattern in binary.globs:
        for directory in sorted(glob.glob(pattern), key=_version_key, reverse=True):
            candidate = os.path.join(directory, binary.name)
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def require(binary: Binary, *, install: bool = True) -> str:
    """Return the path of ``binary``, installing its package with apt-get if root.

    :raises MissingBinary: not installed and we cannot (or may not) install it.
    """
    path = locate(binary)
    if path:
        return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", binary.package]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # The package lists may be stale on a fresh machine: refresh once.
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        path = locate(binary)
        if path:
            return path
        raise MissingBinary(
            f"{binary.name} is missing and 'apt-get install {binary.package}' failed:\n"
            f"{result.stderr.strip()[-2000:]}")
    raise MissingBinary(
        f"{binary.name} is not installed: install the Debian package '{binary.package}' "
        f"(sudo apt-get install {binary.package})")
