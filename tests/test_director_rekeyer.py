"""Keys at rest and their rotation, with real object servers, PostgreSQL and the corpus:
what the object servers' LMDB files hold after delivering the corpus with defaults; key
rotation under concurrent delivery and fetch; ``objmail keys rotate`` killed and resumed;
a scrub or repair run with a keyring that lacks a key.

The module runs a private installation (three objstored, zones a, b, c, its own keyring
made by the launcher, as ``objmail dev up`` makes one) over the session's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from director.client import BlobClient
from director.errors import KeyUnavailable
from director.jobstate import JobState, integer
from director.keyring import Keyring, load_keyring, write_keyring
from director.rekeyer import PAGE_BUCKETS, Rekeyer, census
from metadata.bodystructure import part_data
from metadata.mimetree import iter_parts, parse
from metadata.records import User
from metadata.splitter import parse_skeleton, reassemble
from metadata.uidset import UidSet
from ops.cli import EX_CONFIG, EX_OK, main
from ops.config import Config, to_toml
from tests.conftest import CORPUS
from tests.corpus_features import feature_rows
from tests.director_installation import Installation, installation_fixture, with_client
from tests.mailstack import MailStack, open_stack
from tests.objstore_process import REPO

inst = installation_fixture("keys", objstores=3, cache_bytes=0, lease_ttl=2.0)


def corpus() -> list[bytes]:
    """Every corpus message, in FEATURES.tsv order."""
    return [(CORPUS / r["source"] / r["path"]).read_bytes() for r in feature_rows()]


@pytest.fixture(scope="module")
def config(inst: Installation, postgres: str) -> Config:
    """The installation's config (its keyring), its metadata on the session's PostgreSQL."""
    return inst.config


@pytest.fixture(scope="module")
def ring(inst: Installation, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the installation's keyring that the rotation tests grow in turn (as an
    operator's one keyring file grows): every key id keeps one secret throughout."""
    path = tmp_path_factory.mktemp("ring") / "keyring.toml"
    write_keyring(path, load_keyring(inst.config.director.keyring_file))
    return path


@pytest.fixture(scope="module")
def stack(config: Config) -> Iterator[MailStack]:
    with open_stack(config) as s:
        yield s


# -- what an object server holds ---------------------------------------------------------


def _distinct(sample: bytes) -> bool:
    # Runs of one byte (padding, zeros, '=' lines) also fill free LMDB pages: not evidence.
    return len(set(sample)) >= 12


def at_rest_needles(raw: bytes) -> dict[bytes, str]:
    """What must not be found on an object server for message ``raw``: a 32-byte sample
    from the middle of the header block and of each leaf body over 64 bytes (as sent and,
    for base64, decoded), and the SHA-256 (raw and hex) of each such body and of the
    whole message.  Maps each needle to a description."""
    tree = parse(raw)
    bodies = {"message": raw, "header": raw[tree.root.header.start:tree.root.header.end]}
    for n, part in enumerate(iter_parts(tree.root)):
        if part.children:
            continue
        body = raw[part.body.start:part.body.end]
        bodies[f"part {n}"] = body
        if (part_data(part).transfer_encoding or b"").lower() == b"base64":
            with contextlib.suppress(binascii.Error, ValueError):
                bodies[f"part {n} decoded"] = base64.b64decode(body)
    needles: dict[bytes, str] = {}
    for what, body in bodies.items():
        if len(body) <= 64:
            continue
        middle = body[len(body) // 2 - 16:len(body) // 2 + 16]
        if _distinct(middle):
            needles[middle] = f"32 bytes of the {what}"
        digest = hashlib.sha256(body)
        needles[digest.digest()] = f"SHA-256 of the {what}"
        needles[digest.hexdigest().encode()] = f"hex SHA-256 of the {what}"
    return needles


def find_any(data: bytes, needles: Iterable[bytes]) -> set[bytes]:
    """The needles (each at least 31 bytes long) that occur in ``data``.

    Every occurrence of such a needle covers a whole 16-byte block of ``data`` aligned on
    16: looking each aligned block up among the needles' 16-byte pieces at offsets 0..15
    finds every candidate in one pass, each then checked in place.
    """
    pieces: dict[bytes, list[tuple[bytes, int]]] = {}
    for needle in needles:
        assert len(needle) >= 31
        for k in range(16):
            pieces.setdefault(needle[k:k + 16], []).append((needle, k))
    found: set[bytes] = set()
    view = memoryview(data)
    for j in range(0, len(data) - 15, 16):
        hits = pieces.get(bytes(view[j:j + 16]))
        for needle, k in hits or ():
            if data[j - k:j - k + len(needle)] == needle:
                found.add(needle)
    return found


def lmdb_files(inst: Installation) -> list[Path]:
    files = [p for n in inst.objstores() for p in n.data_dir.rglob("data.mdb")]
    assert len(files) == len(inst.objstores())
    return files


def test_nothing_of_the_corpus_is_readable_on_the_object_servers(
        inst: Installation, config: Config, stack: MailStack) -> None:
    """After the whole corpus is delivered with the default config (the launcher's
    keyring), no object server's LMDB file holds a 32-byte sample of any message's header
    or parts, nor the SHA-256 (raw or hex) of any part or message; a blob stored in
    plaintext beside them (a client with ``allow_plaintext``) is found by the same scan,
    so the scan would see a leak."""
    messages = corpus()
    assert len(messages) > 300
    user = stack.new_user("atrest")

    async def deliver_all() -> None:
        sem = asyncio.Semaphore(8)

        async def one(raw: bytes) -> None:
            async with sem:
                await stack.deliverer.deliver(user.name, raw)

        await asyncio.gather(*(one(raw) for raw in messages))

    stack.run(deliver_all())
    assert stack.run(stack.store.mailboxes.status(user.id, "INBOX")).messages == len(messages)
    needles: dict[bytes, str] = {}
    for raw in messages:
        needles.update(at_rest_needles(raw))
    control = b"a plaintext control blob, " + os.urandom(48).hex().encode()
    plain = dataclasses.replace(config, director=dataclasses.replace(
        config.director, keyring_file="", allow_plaintext=True))
    with_client(plain, lambda blobs: blobs.put(control))
    leaks: list[str] = []
    seen_control = False
    for path in lmdb_files(inst):
        data = path.read_bytes()
        found = find_any(data, [*needles, control[:40]])
        seen_control = seen_control or control[:40] in found
        leaks += [f"{path}: {needles[n]}" for n in found if n in needles]
    assert seen_control, "the scan did not find a blob stored in plaintext"
    assert leaks == []
    assert len(needles) > 1000


# -- rotation under traffic -------------------------------------------------------------


def grow(ring: Path, *, make_current: bool) -> int:
    """Add a key to the shared keyring file, as ``objmail keys add`` does; its id."""
    grown, kid = load_keyring(ring).with_new_key(make_current=make_current)
    write_keyring(ring, grown, replace=True)
    return kid


def with_current(ring: Path, current: int, tmp: Path) -> Path:
    """A copy of the keyring with another current key (same secrets)."""
    keys = load_keyring(ring)
    path = tmp / f"current-{current}.toml"
    write_keyring(path, Keyring(keys.id_secret, keys.secrets, current))
    return path


def with_keyring(config: Config, path: Path) -> Config:
    return dataclasses.replace(config, director=dataclasses.replace(
        config.director, keyring_file=str(path)))


async def read_all(stack: MailStack, user: User) -> dict[int, bytes]:
    """Every message of ``user``'s INBOX by UID, reassembled from the object servers."""
    box = await stack.store.mailboxes.get(user.id, "INBOX")
    entries = await stack.store.messages.fetch(user.id, box.id, UidSet.all(),
                                               items={"skeleton"})
    out = {}
    for entry in entries:
        assert entry.skeleton_id is not None
        skeleton = await stack.blobs.get(entry.skeleton_id)
        parts = await stack.blobs.get_many(parse_skeleton(skeleton).blob_ids())
        out[entry.uid] = reassemble(skeleton, parts)
    return out


def test_rotation_under_concurrent_delivery_and_fetch(config: Config, ring: Path,
                                                     tmp_path: Path) -> None:
    """A new key is distributed to the frontends, then made current for a rotation that
    runs while those frontends keep delivering (under the old key) and fetching: every
    message reads back byte-exact before, during and after; the rotation, stopped after
    its first page and resumed, finishes; a last run catches what was delivered
    meanwhile, and then every copy is under the new key and no copy needed repair."""
    new = grow(ring, make_current=False)
    readers, rotator = ring, with_current(ring, new, tmp_path)
    messages = corpus()[:120]
    first, later = messages[:80], messages[80:]
    with open_stack(with_keyring(config, readers)) as stack:
        user = stack.new_user("rotate")
        expected: dict[int, bytes] = {}
        for raw in first:
            expected[stack.run(stack.deliverer.deliver(user.name, raw)).uid] = raw
        assert stack.run(read_all(stack, user)) == expected
        rotation_config = with_keyring(config, rotator)

        async def traffic(done: asyncio.Event) -> int:
            """Deliver the later messages and fetch everything until the rotation is
            over; returns how many full fetches compared equal while it ran."""
            rounds = 0
            pending = list(later)
            while not done.is_set() or pending:
                if pending:
                    raw = pending.pop(0)
                    expected[(await stack.deliverer.deliver(user.name, raw)).uid] = raw
                during = not done.is_set()
                assert await read_all(stack, user) == expected
                rounds += during
            return rounds

        async def rotate(done: asyncio.Event) -> list[int]:
            client = await BlobClient.open(rotation_config.cluster,
                                           rotation_config.director,
                                           auth=stack.credentials.redis)
            try:
                rekeyer = Rekeyer(client)
                stopped = await rekeyer.run_once(stop=lambda: True)
                assert stopped.interrupted and not stopped.finished
                assert stopped.buckets_done == PAGE_BUCKETS
                resumed = await Rekeyer(client).run_once()
                assert resumed.finished and resumed.target == new
                assert resumed.corrupt == resumed.missing == resumed.queued == 0
                done.set()
                return [stopped.rewritten, resumed.rewritten]
            finally:
                done.set()
                await client.aclose()

        async def both() -> tuple[int, list[int]]:
            done = asyncio.Event()
            return await asyncio.gather(traffic(done), rotate(done))

        rounds, rewritten = stack.run(both())
        assert rounds >= 1 and sum(rewritten) > 0
        assert len(expected) == len(messages)

        async def finish() -> tuple[int, dict[str, int]]:
            client = await BlobClient.open(rotation_config.cluster,
                                           rotation_config.director,
                                           auth=stack.credentials.redis)
            try:
                last = await Rekeyer(client).run_once()
                assert last.finished and last.left == 0
                return await client.repair.backlog(), (await census(client)).by_key
            finally:
                await client.aclose()

        backlog, by_key = stack.run(finish())
        assert backlog == 0
        assert set(by_key) == {str(new)}
        assert stack.run(read_all(stack, user)) == expected


def objmail(config_path: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ops.cli", "--config", str(config_path),
                             *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_objmail_keys_rotate_killed_and_resumed(inst: Installation, config: Config,
                                               ring: Path, tmp_path: Path) -> None:
    """``objmail keys rotate`` adds a key as current and re-encrypts at the rate given;
    killed (SIGKILL) midway, it left its cursor in the job hash; run again it resumes
    that run (no key added), exits 0, and ``keys status`` shows every copy under the new
    key; every message is still byte-exact."""
    shared = with_keyring(config, ring)
    with open_stack(shared) as stack:
        user = stack.new_user("killed")
        expected = {stack.run(stack.deliverer.deliver(user.name, raw)).uid: raw
                    for raw in corpus()[120:200]}
    config_path = tmp_path / "objmail.toml"
    config_path.write_text(to_toml(shared))
    before = set(load_keyring(ring).secrets)

    job = objmail(config_path, "keys", "rotate", "--rate", "64K")

    async def cursor(client: BlobClient) -> int:
        fields = await JobState(client.index.runner, client.index.keys, "rekey").load()
        return integer(fields, "cursor")

    deadline = time.monotonic() + 120
    while with_client(config, cursor) == 0:
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the rotation made no progress"
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    stopped_at = with_client(config, cursor)
    assert 0 < stopped_at < inst.config.director.index_buckets
    keys = load_keyring(ring)
    (added,) = set(keys.secrets) - before
    assert keys.current == added

    time.sleep(inst.config.director.lease_ttl + 0.5)  # the killed run's lease runs out
    again = objmail(config_path, "keys", "rotate")
    out, err = again.communicate(timeout=600)
    assert again.returncode == EX_OK, (out, err)
    assert b"done" in out, out
    assert set(load_keyring(ring).secrets) == before | {added}  # resumed: no new key
    status = objmail(config_path, "keys", "status", "--json")
    out, err = status.communicate(timeout=300)
    assert status.returncode == EX_OK, err
    shown = json.loads(out)
    assert set(shown["by_key"]) == {str(added)} and shown["lacking"] == []
    with open_stack(shared) as stack:
        assert stack.run(read_all(stack, user)) == expected


# -- a keyring that lacks a key -----------------------------------------------------------


def test_a_keyring_lacking_a_key_is_a_config_error_not_corruption(
        config: Config, ring: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """With copies sealed under a key the config's keyring lacks, ``objmail scrub`` and
    ``objmail repair`` (with that blob queued) exit 78 naming the key id and leave the
    repair queue as it was; a read raises KeyUnavailable, never BlobCorrupt; another
    installation's keyring, or none, is refused at start (78) before anything is read."""
    new = grow(ring, make_current=True)
    shared = with_keyring(config, ring)
    data = b"sealed under the newest key " + os.urandom(64)
    bid = with_client(shared, lambda blobs: blobs.put(data))
    keys = load_keyring(ring)
    old = tmp_path / "old.toml"
    write_keyring(old, Keyring(keys.id_secret, {k: s for k, s in keys.secrets.items()
                                                if k != new}, min(keys.secrets)))
    lacking = with_keyring(config, old)

    async def queue(client: BlobClient) -> int:
        await client.repair.add([bid])
        return await client.repair.backlog()

    async def backlog(client: BlobClient) -> int:
        return await client.repair.backlog()

    async def read(client: BlobClient) -> None:
        with pytest.raises(KeyUnavailable, match=f"key id {new}"):
            await client.get(bid)
        assert client.stats.bad_replicas == client.stats.repairs_queued == 0

    queued = with_client(shared, queue)
    with_client(lacking, read)
    path = tmp_path / "lacking.toml"
    path.write_text(to_toml(lacking))
    for command in ("scrub", "repair"):
        capsys.readouterr()
        assert main(["--config", str(path), command]) == EX_CONFIG
        err = capsys.readouterr().err
        assert "cannot decrypt" in err and f"key id {new}" in err, err
        assert with_client(shared, backlog) == queued

    stranger = tmp_path / "stranger.toml"
    write_keyring(stranger, Keyring.generate())
    none = dataclasses.replace(config, director=dataclasses.replace(
        config.director, keyring_file=""))
    for conf, says in ((with_keyring(config, stranger), "not the installation's"),
                       (none, "no keyring is configured")):
        path.write_text(to_toml(conf))
        assert main(["--config", str(path), "scrub"]) == EX_CONFIG
        assert says in capsys.readouterr().err
