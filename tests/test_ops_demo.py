"""`objmail dev demo`: the quickstart's demo user and sample mail."""

from __future__ import annotations

import io
import secrets
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from imapclient import IMAPClient

from metadata.uidset import UidSet
from ops import cli
from ops.config import Config
from ops.demo import demo_messages
from tests.conftest import SessionCluster
from tests.imapd_process import self_signed, start_imapd
from tests.mailstack import open_stack


def test_demo_messages_are_stable() -> None:
    """The sample mail is the same bytes on every call (reproducible demos)."""
    assert demo_messages("x") == demo_messages("x")
    assert len(demo_messages("x")) == 7


def test_demo_seeds_once(storage_cluster: Config, test_cluster: SessionCluster,
                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """demo creates the user and its mail once (a second run changes nothing), and an
    IMAP client then reads the sample mail byte for byte."""
    monkeypatch.setenv("OBJMAIL_CONFIG", str(test_cluster.run_dir / "objmail.toml"))
    name = f"demo{secrets.token_hex(3)}"
    args = ["dev", "demo", "--dir", str(test_cluster.run_dir), "--user", name,
            "--password", "pw"]
    for expected in ("delivered 7 sample messages", "Connect an IMAP client"):
        out = io.StringIO()
        with redirect_stdout(out):
            assert cli.main(args) == 0
        assert expected in out.getvalue()
    with open_stack(storage_cluster) as stack:
        user = stack.run(stack.store.users.authenticate(name, "pw"))
        assert user is not None
        box = stack.run(stack.store.mailboxes.get(user.id, "INBOX"))
        entries = stack.run(stack.store.messages.fetch(user.id, box.id, UidSet.all(),
                                                       items={"skeleton"}))
        assert len(entries) == 7
    # And a real IMAP client reads exactly the sample mail, as the README shows.
    server = start_imapd(test_cluster, "imapd-demo", self_signed(tmp_path))
    try:
        client = IMAPClient("127.0.0.1", port=server.imap_port, ssl=False)
        client.login(name, "pw")
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(client.search("ALL"), ["RFC822"])
        client.logout()
    finally:
        server.stop()
    assert [fetched[uid][b"RFC822"] for uid in sorted(fetched)] == demo_messages(name)
