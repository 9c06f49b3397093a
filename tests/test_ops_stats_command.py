"""`objmail stats` and deduplication, measured on the real object servers.

One attachment mailed to many users in different messages is stored once per
replica: the object servers' bytes grow by about one copy of it times the
replication factor, plus one small skeleton per message.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import redirect_stdout

import pytest

from ops import cli
from ops.config import Config
from ops.stats_command import StorageStats, collect
from tests.conftest import SessionCluster
from tests.mailstack import MailStack, open_stack

USERS = 200
ATTACHMENT = 256 * 1024


def message(to: str, n: int, pdf: bytes) -> bytes:
    """A distinct message (own headers and text) carrying the same PDF attachment."""
    encoded = base64.encodebytes(pdf).replace(b"\n", b"\r\n")
    boundary = b"b" + secrets.token_hex(8).encode()
    return (b"From: reports@example.org\r\nTo: " + to.encode() + b"@example.org\r\n"
            b"Subject: Quarterly report, copy " + str(n).encode() + b"\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=" + boundary +
            b"\r\n\r\n--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\nDear " +
            to.encode() + b", the report is attached.\r\n--" + boundary +
            b"\r\nContent-Type: application/pdf; name=report.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=report.pdf\r\n\r\n" + encoded +
            b"--" + boundary + b"--\r\n")


@pytest.fixture(scope="module")
def stack(storage_cluster: Config) -> Iterator[MailStack]:
    with open_stack(storage_cluster) as s:
        yield s


def test_fanout_attachment_is_stored_once(stack: MailStack) -> None:
    """200 messages sharing a 256 KiB PDF grow physical bytes by ~1 copy x replicas."""
    pdf = b"%PDF-1.4\n" + os.urandom(ATTACHMENT)  # incompressible, like a real PDF
    users = [stack.new_user("fan") for _ in range(USERS)]
    before = stack.run(collect(stack.config, stack.credentials))

    async def deliver_all() -> None:
        gate = asyncio.Semaphore(10)  # ten deliveries in flight, like 10 LMTP connections

        async def one(n: int) -> None:
            async with gate:
                await stack.deliverer.deliver(users[n].name, message(users[n].name, n, pdf))

        await asyncio.gather(*(one(n) for n in range(USERS)))

    stack.run(deliver_all())
    after = stack.run(collect(stack.config, stack.credentials))
    logical = after.logical_bytes - before.logical_bytes
    physical = after.physical_bytes - before.physical_bytes
    replicas = stack.config.director.replicas
    assert logical > USERS * ATTACHMENT  # each user sees the whole attachment
    # One copy of the PDF per replica, plus a skeleton (well under 2 KiB) per message.
    assert physical < replicas * (ATTACHMENT + 4096 + USERS * 2048)
    assert physical > replicas * ATTACHMENT
    ratio = logical / (physical / replicas)
    assert ratio > 40, f"dedup ratio {ratio:.1f}"
    assert after.blobs - before.blobs == 1 + USERS  # the PDF and one skeleton per message


def test_stats_cli_json(stack: MailStack, test_cluster: SessionCluster,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`objmail stats --json` reports the same figures as the library."""
    monkeypatch.setenv("OBJMAIL_CONFIG", str(test_cluster.run_dir / "objmail.toml"))
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["stats", "--json"]) == 0
    got = json.loads(out.getvalue())
    expected = stack.run(collect(stack.config, stack.credentials))
    assert got["users"] == expected.users
    assert got["logical_bytes"] == expected.logical_bytes
    assert got["blobs"] == expected.blobs
    assert got["dedup_ratio"] == pytest.approx(
        StorageStats(**{k: v for k, v in got.items() if k != "dedup_ratio"}).dedup_ratio,
        abs=0.001)
