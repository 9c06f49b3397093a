"""`objmail deliver` as an MTA's pipe transport would run it: stdin in, sysexits out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metadata.uidset import UidSet
from ops.config import Config
from tests.conftest import CORPUS, SessionCluster
from tests.mailstack import open_stack


def deliver(cluster: SessionCluster, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, OBJMAIL_CONFIG=str(cluster.run_dir / "objmail.toml"))
    return subprocess.run([sys.executable, "-m", "ops.cli", "deliver", *args], input=stdin,
                          env=env, capture_output=True, timeout=60, check=False)


def test_deliver_exit_codes(storage_cluster: Config, test_cluster: SessionCluster) -> None:
    """0 delivered, 67 unknown user, 73 unknown mailbox, 77 over quota, 65 empty input."""
    raw = (CORPUS / "apache-james-mime4j/mimetools-testmsgs/twopart.msg").read_bytes()
    with open_stack(storage_cluster) as stack:
        user = stack.new_user("lda")
        tight = stack.new_user("tight", quota=10)
        ok = deliver(test_cluster, raw, "--user", user.name, "--flag", "\\Seen")
        assert ok.returncode == 0, ok.stderr
        assert b"as UID 1" in ok.stdout
        (entry,) = stack.run(stack.store.messages.fetch(
            user.id, stack.run(stack.store.mailboxes.get(user.id, "INBOX")).id,
            UidSet.all()))
        assert "\\Seen" in entry.flags.names()
        assert deliver(test_cluster, raw, "--user", "no-such-user-x").returncode == 67
        assert deliver(test_cluster, raw, "--user", user.name,
                       "--mailbox", "Nope").returncode == 73
        assert deliver(test_cluster, raw, "--user", tight.name).returncode == 77
        assert deliver(test_cluster, b"", "--user", user.name).returncode == 65


@pytest.mark.parametrize("path", ["mikel-mail/plain_emails/basic_email.eml",
                                  "mikel-mail/plain_emails/basic_email_lf.eml"])
def test_deliver_to_other_mailbox(storage_cluster: Config, test_cluster: SessionCluster,
                                  path: str) -> None:
    """--mailbox puts the message there."""
    raw = (CORPUS / path).read_bytes()
    with open_stack(storage_cluster) as stack:
        user = stack.new_user("lda")
        done = deliver(test_cluster, raw, "--user", user.name, "--mailbox", "Archive")
        assert done.returncode == 0, done.stderr
        assert stack.run(stack.store.mailboxes.status(user.id, "Archive")).messages == 1
