"""The installation's keyring: the secrets that name blobs and encrypt them.

A keyring is a small TOML file (``director.keyring_file``, mode 0600) made by
``objmail keys new``::

    version = 1
    id_secret = "<64 hex digits>"   # names blobs; never changes (see below)
    current = 2                     # the encryption key new values are sealed with

    [encryption]                    # key id -> secret; old ids stay while values use them
    1 = "<64 hex digits>"
    2 = "<64 hex digits>"

Nothing is used as it is: :func:`derive` turns each secret into the key for one purpose
with HKDF-SHA256, its ``info`` naming the purpose, so the id key and the encryption keys
are independent even if an operator pasted one secret twice.

* The **id key** names content: a blob id is HMAC-SHA-256(id key, content)
  (:class:`director.blobids.BlobIds`), so identical content is still one blob within the
  installation, while an object server, which sees only ids and ciphertext, can neither
  learn a blob's plain hash nor confirm a guessed file.  Changing it changes every blob
  id: it cannot be rotated online (docs/security.md, "Keys").
* Each **encryption key** (a small integer id, 1..65535) seals values
  (:class:`director.codec.BlobCodec`); one is current, the others decrypt what they
  sealed until ``objmail keys rotate`` has re-encrypted it.  Key id 0 names the key of
  the legacy ``director.encryption_key_file`` (raw AES, the envelope before keyrings),
  which is read, never written, when a keyring is configured.

Every installation records a fingerprint of each key it has seen in Redis
(:class:`director.keyregistry.KeyRegistry`): a frontend with another installation's
keyring, or another secret under a known key id, refuses to start instead of calling good
values corrupt.  Fingerprints are HMACs of the derived keys and reveal nothing of them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from director.errors import DirectorError
from runtime import errors as kinds
from runtime.config import ConfigError
from runtime.secrets import read_secret

#: The config key every keyring error names.
KEYRING_KEY = "director.keyring_file"
#: Bytes of every secret and derived key.
SECRET_BYTES = 32
#: Key ids a keyring may hold (0 is the legacy ``encryption_key_file``).
MAX_KEY_ID = 0xFFFF
#: The key id of the legacy single-key file.
LEGACY_KEY_ID = 0
#: The largest keyring file read (room for hundreds of keys).
MAX_KEYRING_BYTES = 64 * 1024

_ID_INFO = b"objmail blob id v1"
_ENC_INFO = b"objmail blob encryption v1"
_CHECK = b"objmail key fingerprint v1"


class KeyringError(ConfigError, DirectorError, kinds.Misconfigured):
    """The keyring is missing, unsafe, malformed, or not this installation's (a
    configuration error: exit 78 from a daemon or a command)."""

    def __init__(self, message: str) -> None:
        super().__init__(KEYRING_KEY, message)


def derive(secret: bytes, info: bytes) -> bytes:
    """The 32-byte key for one purpose (``info``) from a secret: HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=SECRET_BYTES, salt=None,
                info=info).derive(secret)


def fingerprint(key: bytes) -> str:
    """A public check value of a derived key (what the installation records in Redis)."""
    return hmac.new(key, _CHECK, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Keyring:
    """The secrets of one installation.

    :param id_secret: names blobs (via :attr:`id_key`).
    :param secrets: encryption secrets by key id.
    :param current: the key id new values are sealed with.
    """

    id_secret: bytes
    secrets: Mapping[int, bytes]
    current: int
    #: Derived once: the id key and one encryption key per id.
    id_key: bytes = field(init=False, repr=False)
    keys: Mapping[int, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.id_secret) != SECRET_BYTES:
            raise KeyringError(f"id_secret must be {SECRET_BYTES} bytes")
        for kid, secret in self.secrets.items():
            if not 1 <= kid <= MAX_KEY_ID:
                raise KeyringError(f"encryption key id {kid} is not in 1..{MAX_KEY_ID}")
            if len(secret) != SECRET_BYTES:
                raise KeyringError(f"encryption key {kid} must be {SECRET_BYTES} bytes")
        if self.current not in self.secrets:
            raise KeyringError(f"current = {self.current} names no key of [encryption]")
        object.__setattr__(self, "id_key", derive(self.id_secret, _ID_INFO))
        object.__setattr__(self, "keys", {kid: derive(s, _ENC_INFO)
                                          for kid, s in self.secrets.items()})

    @classmethod
    def generate(cls) -> Keyring:
        """A fresh keyring: a new id secret and encryption key 1, current."""
        return cls(secrets.token_bytes(SECRET_BYTES), {1: secrets.token_bytes(SECRET_BYTES)},
                   1)

    def with_new_key(self, *, make_current: bool) -> tuple[Keyring, int]:
        """This keyring plus a fresh encryption key (the next id); and that id."""
        kid = max(self.secrets) + 1
        if kid > MAX_KEY_ID:
            raise KeyringError(f"no key id left after {MAX_KEY_ID}")
        grown = {**self.secrets, kid: secrets.token_bytes(SECRET_BYTES)}
        return Keyring(self.id_secret, grown, kid if make_current else self.current), kid

    def fingerprints(self) -> dict[str, str]:
        """``id`` and ``key:<n>`` -> fingerprint (what :class:`KeyRegistry` records)."""
        out = {"id": fingerprint(self.id_key)}
        out.update({f"key:{kid}": fingerprint(k) for kid, k in self.keys.items()})
        return out

    def to_toml(self) -> str:
        lines = ["# objmail keyring (director.keyring_file): keep it secret (mode 0600), the",
                 "# same on every frontend, and a copy offline.  Losing it loses every blob.",
                 "# Made by `objmail keys new`; `objmail keys add|rotate` add keys.",
                 "version = 1",
                 "# Names blobs; never change it (docs/security.md, \"Keys\").",
                 f'id_secret = "{self.id_secret.hex()}"',
                 "# The encryption key new values are sealed with.",
                 f"current = {self.current}",
                 "",
                 "# Keep an old key until `objmail keys status` shows nothing under it.",
                 "[encryption]"]
        lines += [f'{kid} = "{s.hex()}"' for kid, s in sorted(self.secrets.items())]
        return "\n".join(lines) + "\n"


def load_keyring(path: str | Path) -> Keyring:
    """Read and check a keyring file.

    :raises KeyringError: missing, readable by group or others, or malformed; the
        message says which and how to fix it.
    """
    if not os.path.lexists(path):
        raise KeyringError(f"{path} does not exist (create it with `objmail keys new "
                           f"--out {path}`)")
    try:
        text = read_secret(path, KEYRING_KEY, limit=MAX_KEYRING_BYTES)
        return _parse(tomllib.loads(text))
    except KeyringError as exc:
        raise KeyringError(f"{path}: {exc.message}") from None
    except ConfigError as exc:
        raise KeyringError(exc.message) from None
    except tomllib.TOMLDecodeError as exc:
        raise KeyringError(f"{path} is not valid TOML: {exc}") from None


def _parse(doc: Mapping[str, object]) -> Keyring:
    if doc.get("version") != 1:
        raise KeyringError(f"unknown keyring version {doc.get('version')!r} (expected 1)")
    unknown = set(doc) - {"version", "id_secret", "current", "encryption"}
    if unknown:
        raise KeyringError(f"unknown key(s) {', '.join(sorted(unknown))}")
    table = doc.get("encryption")
    if not isinstance(table, dict) or not table:
        raise KeyringError("[encryption] must hold at least one key")
    current = doc.get("current")
    if not isinstance(current, int) or isinstance(current, bool):
        raise KeyringError("current must be a key id (an integer)")
    keys: dict[int, bytes] = {}
    for name, value in table.items():
        if not name.isdigit():
            raise KeyringError(f"[encryption] key id {name!r} is not a number")
        keys[int(name)] = _secret(value, f"[encryption] {name}")
    return Keyring(_secret(doc.get("id_secret"), "id_secret"), keys, current)


def _secret(value: object, what: str) -> bytes:
    if isinstance(value, str) and len(value) == 2 * SECRET_BYTES:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise KeyringError(f"{what} must be {2 * SECRET_BYTES} hex digits")


def write_keyring(path: str | Path, keyring: Keyring, *, replace: bool = False) -> None:
    """Write ``keyring`` to ``path``, mode 0600 from the first byte.

    :param replace: replace an existing file (atomically); otherwise refuse to.
    :raises KeyringError: the file exists (and not ``replace``) or cannot be written.
    """
    path = Path(path)
    target = path.with_name(f".{path.name}.new") if replace else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if replace:
            raise KeyringError(f"{target} exists: another `objmail keys` is writing "
                               "the keyring, or one was interrupted (remove it)") from None
        raise KeyringError(f"{path} exists; refusing to overwrite a keyring") from None
    except OSError as exc:
        raise KeyringError(f"{target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(keyring.to_toml())
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(target, path)
    except BaseException:
        if replace:
            target.unlink(missing_ok=True)
        raise
