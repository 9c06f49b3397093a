"""The kinds of failure, and every package's errors filed under its base and one kind."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import ssl

import pytest

from runtime import errors as kinds

#: Each package and its one base error.
BASES = {
    "objstore": "objstore.errors.ObjstoreError",
    "director": "director.errors.DirectorError",
    "metadata": "metadata.errors.MetadataError",
    "imapd": "imapd.errors.ImapdError",
}


def _load(path: str) -> type:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type)
    return cls


def _error_classes(package: str) -> list[type[BaseException]]:
    """The public exception classes defined in ``package``'s modules."""
    found: dict[str, type[BaseException]] = {}
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__, package + "."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == info.name and not name.startswith("_")):
                found[f"{info.name}.{name}"] = obj
    return list(found.values())


@pytest.mark.parametrize("package", sorted(BASES))
def test_every_error_class_has_its_package_base_and_one_kind(package: str) -> None:
    """Each public exception class of a package derives from the package's base error and
    from exactly one kind (the bases themselves excepted), so every protocol map knows
    it."""
    base = _load(BASES[package])
    classes = _error_classes(package)
    assert len(classes) > 3
    for cls in classes:
        if cls is base or cls.__name__ in ("StorageError", "BlobError"):
            continue  # abstract groupings; their subclasses carry the kind
        assert issubclass(cls, base), f"{cls.__module__}.{cls.__name__} is outside {base}"
        mine = [k for k in kinds.KINDS if issubclass(cls, k)]
        assert len(mine) == 1, f"{cls.__module__}.{cls.__name__} has kinds {mine}"


@pytest.mark.parametrize(("exc", "kind"), [
    (kinds.Corruption("x"), kinds.Corruption),
    (kinds.Unavailable("x"), kinds.Unavailable),
    (kinds.LimitExceeded("x"), kinds.LimitExceeded),
    (kinds.InvalidInput("x"), kinds.InvalidInput),
    (kinds.Misconfigured("x"), kinds.Misconfigured),
    (ConnectionRefusedError(111, "refused"), kinds.Unavailable),
    (TimeoutError(), kinds.Unavailable),
    (ValueError("our own misuse"), None),
    (KeyError("k"), None),
])
def test_kind_of(exc: BaseException, kind: type | None) -> None:
    """kind_of names an error's kind; an OSError that escaped unwrapped counts as
    unavailable; anything else is a bug (None)."""
    assert kinds.kind_of(exc) is kind


def _raised_from(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as caught:
        return caught


@pytest.mark.parametrize(("exc", "text"), [
    (_raised_from(RuntimeError("Error 111 connecting to h:1. Connect call failed"),
                  ConnectionRefusedError(111, "Connect call failed ('h', 1)")),
     "Connection refused"),
    (_raised_from(RuntimeError("driver internals"), TimeoutError()), "timed out"),
    (_raised_from(RuntimeError("x"), ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")),
     "TLS handshake failed"),
    (RuntimeError("no  socket\nunderneath"), "no socket underneath"),
])
def test_reason_names_the_root_cause(exc: Exception, text: str) -> None:
    """reason() gives the innermost cause in an operator's words: the OS's for a socket
    error, never OpenSSL's errno read as an OS one, else the message on one line."""
    assert kinds.reason(exc).startswith(text)
