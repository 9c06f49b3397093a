"""The keyring file and keyed ids: creation 0600, refusals with clear messages, key
derivation, keyed and legacy ids, and the offline ``objmail keys new|list|add``."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from director.blobids import BlobIds
from director.codec import CodecError
from director.config import DirectorConfig
from director.keyring import (
    Keyring,
    KeyringError,
    derive,
    fingerprint,
    load_keyring,
    write_keyring,
)
from ops.cli import EX_CONFIG, EX_OK, main
from ops.config import Config, to_toml

CONTENT = b"Subject: a known document\r\n\r\n" + b"the same bytes everywhere\r\n" * 100


def test_a_new_keyring_is_0600_and_loads_back(tmp_path: Path) -> None:
    """write_keyring creates the file mode 0600 and load_keyring reads the same keys."""
    path = tmp_path / "keyring.toml"
    ring = Keyring.generate()
    write_keyring(path, ring)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = load_keyring(path)
    assert (back.id_secret, dict(back.secrets), back.current) == \
        (ring.id_secret, dict(ring.secrets), 1)
    assert ring.id_secret.hex() in path.read_text()


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    """A second write_keyring to the same path is refused and leaves the first intact."""
    path = tmp_path / "keyring.toml"
    first = Keyring.generate()
    write_keyring(path, first)
    with pytest.raises(KeyringError, match="refusing to overwrite"):
        write_keyring(path, Keyring.generate())
    assert load_keyring(path).id_secret == first.id_secret


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_keyring_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    """A keyring readable by group or others is refused, naming the fix."""
    path = tmp_path / "keyring.toml"
    write_keyring(path, Keyring.generate())
    path.chmod(mode)
    with pytest.raises(KeyringError, match=rf"mode {mode:04o}.*chmod 600") as err:
        load_keyring(path)
    assert err.value.key == "director.keyring_file"


def test_a_missing_or_malformed_keyring_is_a_clear_error(tmp_path: Path) -> None:
    """Missing file, bad TOML, bad hex, unknown version and a current key that is not
    in the keyring each raise KeyringError saying what is wrong."""
    path = tmp_path / "keyring.toml"
    with pytest.raises(KeyringError, match=r"does not exist.*objmail keys new"):
        load_keyring(path)
    good = Keyring.generate().to_toml()
    cases = {
        "not valid TOML": "id_secret = ",
        "64 hex digits": good.replace('id_secret = "', 'id_secret = "zz'),
        "unknown keyring version": good.replace("version = 1", "version = 2"),
        "names no key": good.replace("current = 1", "current = 7"),
        "not a number": good.replace("\n1 = ", '\none = '),
    }
    for message, text in cases.items():
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, text.encode())
        os.close(fd)
        with pytest.raises(KeyringError, match=message):
            load_keyring(path)


def test_keys_are_derived_per_purpose() -> None:
    """The id key and an encryption key differ even from the same secret, the same
    secret always derives the same keys, and a fingerprint reveals neither."""
    secret = bytes(range(32))
    ring = Keyring(secret, {1: secret, 2: bytes(32)}, 2)
    assert ring.id_key != ring.keys[1] and ring.id_key != secret
    assert ring.keys[1] == Keyring(secret, {1: secret}, 1).keys[1]
    assert derive(secret, b"a") != derive(secret, b"b")
    prints = ring.fingerprints()
    assert set(prints) == {"id", "key:1", "key:2"}
    assert all(len(fp) == 32 and secret.hex()[:32] != fp for fp in prints.values())
    assert fingerprint(ring.id_key) == prints["id"]


def test_with_new_key_adds_the_next_id() -> None:
    """A new key takes the next id and becomes current only when asked; old keys stay."""
    ring = Keyring.generate()
    kept, kid = ring.with_new_key(make_current=False)
    assert (kid, kept.current, sorted(kept.secrets)) == (2, 1, [1, 2])
    moved, kid = kept.with_new_key(make_current=True)
    assert (kid, moved.current, moved.id_secret) == (3, 3, ring.id_secret)


def test_keyed_ids_name_content_and_accept_legacy_ids() -> None:
    """A keyed id is the same for the same content and key, differs from the plain
    SHA-256 and between installations; verify accepts the keyed and the legacy id of the
    content and nothing else; hasher_like follows the scheme that named a chunk."""
    ids = BlobIds(Keyring.generate().id_key)
    other = BlobIds(Keyring.generate().id_key)
    plain = hashlib.sha256(CONTENT).hexdigest()
    bid = ids.id_of(CONTENT)
    assert bid == ids.id_of(memoryview(CONTENT)) and len(bid) == 64
    assert bid not in (plain, other.id_of(CONTENT), BlobIds().id_of(CONTENT))
    assert BlobIds().id_of(CONTENT) == plain
    ids.verify(bid, CONTENT)
    ids.verify(plain, CONTENT)
    for wrong in (other.id_of(CONTENT), ids.id_of(CONTENT + b"x")):
        with pytest.raises(CodecError, match="does not match"):
            ids.verify(wrong, CONTENT)
    with pytest.raises(CodecError):
        BlobIds().verify(bid, CONTENT)  # no keyring: only plain ids
    half = len(CONTENT) // 2
    for named in (bid, plain):
        first = ids.id_of(CONTENT[:half]) if named == bid else \
            hashlib.sha256(CONTENT[:half]).hexdigest()
        h = ids.hasher_like(first, CONTENT[:half])
        h.update(CONTENT[half:])
        assert h.hexdigest() == named


def write_config(tmp_path: Path, **director: object) -> Path:
    path = tmp_path / "objmail.toml"
    path.write_text(to_toml(Config(director=DirectorConfig(**director))))  # type: ignore[arg-type]
    return path


def test_objmail_keys_new_list_add(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``keys new`` writes a 0600 keyring and refuses to overwrite it; ``keys list``
    shows ids, the current one and fingerprints but no secret; ``keys add`` adds key 2,
    current only with --current; with no keyring configured they exit 78."""
    ring = tmp_path / "ring.toml"
    cfg = ["--config", str(write_config(tmp_path, keyring_file=str(ring)))]
    assert main([*cfg, "keys", "new"]) == EX_OK
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600
    assert main([*cfg, "keys", "new"]) == EX_CONFIG
    assert "refusing to overwrite" in capsys.readouterr().err
    secrets_ = [load_keyring(ring).id_secret.hex(), load_keyring(ring).secrets[1].hex()]
    assert main([*cfg, "keys", "list"]) == EX_OK
    out = capsys.readouterr().out
    assert "key     1" in out and "(current)" in out
    assert not any(s in out for s in secrets_)
    assert main([*cfg, "keys", "add"]) == EX_OK
    assert load_keyring(ring).current == 1 and sorted(load_keyring(ring).secrets) == [1, 2]
    assert main([*cfg, "keys", "add", "--current"]) == EX_OK
    assert load_keyring(ring).current == 3
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600
    capsys.readouterr()
    (tmp_path / "bare").mkdir()
    bare = ["--config", str(write_config(tmp_path / "bare", allow_plaintext=True))]
    assert main([*bare, "keys", "list"]) == EX_CONFIG
    assert "keyring_file" in capsys.readouterr().err
    ring.chmod(0o644)
    assert main([*cfg, "keys", "list"]) == EX_CONFIG
    assert "chmod 600" in capsys.readouterr().err
