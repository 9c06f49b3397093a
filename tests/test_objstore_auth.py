"""memcached's text-protocol authentication: the gate's replies (pure), and the protocol
adapter that applies it to objstored's and directord's connections (StringTransport)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from objstore import protocol as p
from objstore.auth import (
    AUTH_LIMITS,
    E_AUTH_FAILURE,
    E_UNAUTHENTICATED,
    AuthTable,
    auth_request,
    authenticate,
)
from objstore.replies import ErrorReply, Status, serialize
from runtime.config import ConfigError
from tests.objstore_harness import Harness, exchange

TABLE = AuthTable([("alice", "s3cret"), ("bob", "pw2")])
UNAUTH = b"CLIENT_ERROR unauthenticated\r\n"
FAILURE = b"CLIENT_ERROR authentication failure\r\n"


def _set(value: bytes, name: bytes = b"set", noreply: bool = False) -> p.Store:
    return p.Store(name, b"any", 0, 0, value, noreply=noreply)


@pytest.mark.parametrize(("cmd", "reply", "outcome"), [
    (_set(b"alice s3cret"), Status(b"STORED"), True),
    (_set(b"bob pw2"), Status(b"STORED"), True),
    (_set(b"alice  s3cret"), Status(b"STORED"), True),
    (_set(b"alice s3cret extra words"), Status(b"STORED"), True),
    (_set(b"alice s3cret", noreply=True), Status(b"STORED"), True),
    (_set(b"alice wrong"), E_AUTH_FAILURE, False),
    (_set(b"alice pw2"), E_AUTH_FAILURE, False),
    (_set(b"alice s3cret\n"), E_AUTH_FAILURE, False),
    (_set(b"mallory s3cret"), E_AUTH_FAILURE, False),
    (_set(b"alice"), ErrorReply(b"CLIENT_ERROR", b"bad authentication token format"), None),
    (_set(b""), ErrorReply(b"CLIENT_ERROR", b"bad authentication token format"), None),
    (_set(b"alice s3cret", name=b"add"), E_UNAUTHENTICATED, None),
    (_set(b"alice s3cret", name=b"cas"), E_UNAUTHENTICATED, None),
    (p.MetaSet(b"any", b"alice s3cret"), E_UNAUTHENTICATED, None),
    (p.TooLarge(b"set", b"any"), E_AUTH_FAILURE, False),
    (p.ProtocolError(p.E_BAD_CHUNK),
     ErrorReply(b"CLIENT_ERROR", b"bad command line termination"), None),
    (p.ProtocolError(p.E_LINE_TOO_LONG, fatal=True),
     ErrorReply(b"CLIENT_ERROR", b"line too long"), None),
    (p.ProtocolError(p.E_ERROR), E_UNAUTHENTICATED, None),
    (p.Get((b"k",)), E_UNAUTHENTICATED, None),
    (p.Delete(b"k"), E_UNAUTHENTICATED, None),
    (p.Metadump(b"all"), E_UNAUTHENTICATED, None),
    (p.Stats(()), E_UNAUTHENTICATED, None),
    (p.Version(), E_UNAUTHENTICATED, None),
    (p.Quit(), E_UNAUTHENTICATED, None),
    (p.MetaNoop(), E_UNAUTHENTICATED, None),
])
def test_authenticate_answers_as_memcached(cmd: p.Command, reply: object,
                                           outcome: bool | None) -> None:
    """Before authentication only a ``set`` of "user password" gets in; everything else is
    refused with memcached 1.6's words, and only set attempts count as attempts."""
    assert authenticate(cmd, TABLE) == (reply, outcome)


def test_auth_table_matches_whole_user_and_password() -> None:
    """A user's password does not work for another user, nor does a prefix of it."""
    assert TABLE.check(b"alice", b"s3cret")
    assert not TABLE.check(b"bob", b"s3cret")
    assert not TABLE.check(b"alice", b"s3cre")
    assert not TABLE.check(b"alic", b"s3cret")
    assert not AuthTable([]).check(b"", b"")


def test_auth_table_loads_memcached_authfile(tmp_path: Path) -> None:
    """A 0600 memcached authfile loads; a readable one is a config error naming the key."""
    path = tmp_path / "auth"
    path.write_text("alice:s3cret\nbob:pw:with:colons\n")
    path.chmod(0o600)
    table = AuthTable.load(path, "objstore.auth_file")
    assert len(table) == 2 and table.check(b"bob", b"pw:with:colons")
    path.chmod(0o640)
    with pytest.raises(ConfigError) as info:
        AuthTable.load(path, "objstore.auth_file")
    assert info.value.key == "objstore.auth_file"


def test_auth_request_is_the_set_memcached_expects() -> None:
    """The client's authenticating request parses as a set whose value is "user pw"."""
    parser = p.CommandParser()
    parser.feed(b"".join(auth_request("alice", "s3cret")))
    assert parser.next_command() == p.Store(b"set", b"auth", 0, 0, b"alice s3cret")


# -- the protocol adapter ------------------------------------------------------------


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    harness.factory.auth = TABLE
    yield harness
    harness.close()


LOGIN = b"set a 0 0 12\r\nalice s3cret\r\n"


@pytest.mark.parametrize("request_", [
    b"get k\r\n", b"gets k\r\n", b"add k 0 0 1\r\nx\r\n", b"cas k 0 0 1 1\r\nx\r\n",
    b"delete k\r\n",
    b"lru_crawler metadump all\r\n", b"stats\r\n", b"stats detail dump\r\n", b"version\r\n",
    b"mg k v\r\n", b"ms k 1\r\nx\r\n", b"md k\r\n", b"incr n 1\r\n", b"touch k 0\r\n",
    b"flush_all\r\n", b"verbosity 1\r\n", b"mn\r\n", b"bogus\r\n", b"\r\n",
])
def test_unauthenticated_commands_are_refused(h: Harness, request_: bytes) -> None:
    """Every command of an unauthenticated connection gets CLIENT_ERROR unauthenticated,
    runs nothing, and leaves the connection open."""
    proto, tr = h.connect()
    assert exchange(proto, tr, request_) == UNAUTH
    assert not tr.disconnecting
    assert h.storage.info()["curr_items"] == 0


def test_set_before_login_stores_nothing(h: Harness) -> None:
    """A set before authenticating is a login attempt, whatever its value: nothing is
    stored, and its reply is memcached's."""
    proto, tr = h.connect()
    assert exchange(proto, tr, b"set k 0 0 1 noreply\r\nx\r\n") == \
        b"CLIENT_ERROR bad authentication token format\r\n"
    assert exchange(proto, tr, b"set k 0 0 10\r\nhello data\r\n") == FAILURE
    assert h.storage.info()["curr_items"] == 0


def test_login_then_commands_run(h: Harness) -> None:
    """After a set of "user password" (STORED, nothing stored) the connection is served."""
    proto, tr = h.connect()
    assert exchange(proto, tr, LOGIN) == b"STORED\r\n"
    assert h.storage.info()["curr_items"] == 0
    assert exchange(proto, tr, b"set k 0 0 2\r\nhi\r\nget k\r\n") == \
        b"STORED\r\nVALUE k 0 2\r\nhi\r\nEND\r\n"
    assert exchange(proto, tr, b"delete k\r\n") == b"DELETED\r\n"
    # Later sets are plain sets, "user password" values included.
    assert exchange(proto, tr, LOGIN + b"get a\r\n") == \
        b"STORED\r\nVALUE a 0 12\r\nalice s3cret\r\nEND\r\n"


def test_wrong_password_is_refused_and_may_retry(h: Harness) -> None:
    """A wrong password gets CLIENT_ERROR authentication failure; the connection stays
    unauthenticated and open, and a right one later gets in; both attempts are counted."""
    proto, tr = h.connect()
    assert exchange(proto, tr, b"set a 0 0 11\r\nalice wrong\r\n") == FAILURE
    assert not tr.disconnecting
    assert exchange(proto, tr, b"get a\r\n") == UNAUTH
    assert exchange(proto, tr, LOGIN) == b"STORED\r\n"
    assert h.counters.auth_cmds == 2 and h.counters.auth_errors == 1


def test_login_pipelined_with_commands_byte_by_byte(h: Harness) -> None:
    """A login pipelined ahead of commands authenticates them, however the bytes arrive;
    commands before the login are refused."""
    proto, tr = h.connect()
    stream = b"get k\r\n" + LOGIN + b"set k 0 0 1\r\nv\r\nget k\r\n"
    for i in range(len(stream)):
        proto.dataReceived(stream[i:i + 1])
    assert tr.value() == UNAUTH + b"STORED\r\nSTORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"


def test_noreply_login_still_answers(h: Harness) -> None:
    """As in memcached, the authenticating set answers STORED even with noreply."""
    proto, tr = h.connect()
    assert exchange(proto, tr, b"set a 0 0 12 noreply\r\nalice s3cret\r\n") == b"STORED\r\n"


def test_quit_before_login_is_refused_then_closes(h: Harness) -> None:
    """quit before authenticating gets memcached's refusal, then the connection closes."""
    proto, tr = h.connect()
    assert exchange(proto, tr, b"quit\r\n") == UNAUTH
    assert tr.disconnecting


def test_small_limits_until_login(h: Harness) -> None:
    """Until it authenticates a client may not send long lines (closed) nor large values
    (refused, and discarded as they arrive instead of buffered); after, the configured
    limits apply."""
    proto, tr = h.connect()
    big = AUTH_LIMITS.max_item_size + 1
    proto.dataReceived(b"set a 0 0 %d\r\n" % big + b"x" * (big // 2))
    assert proto.parser.buffered < AUTH_LIMITS.max_item_size
    proto.dataReceived(b"x" * (big - big // 2) + b"\r\n")
    assert tr.value() == FAILURE
    tr.clear()
    assert exchange(proto, tr, LOGIN) == b"STORED\r\n"
    value = b"v" * (AUTH_LIMITS.max_item_size * 4)
    assert exchange(proto, tr, b"set big 0 0 %d\r\n" % len(value) + value + b"\r\n") == \
        b"STORED\r\n"
    other, tr2 = h.connect()
    assert exchange(other, tr2, b"get " + b"k" * AUTH_LIMITS.max_line + b"\r\n") == \
        b"CLIENT_ERROR line too long\r\n"
    assert tr2.disconnecting


def test_stats_show_authentication(tmp_path: Path) -> None:
    """stats counts attempts and failures (not malformed ones); stats settings names the
    auth file, as memcached does."""
    h = Harness(tmp_path, auth_file="/etc/objmail/blob-auth")
    h.factory.auth = TABLE
    try:
        proto, tr = h.connect()
        exchange(proto, tr, b"set a 0 0 5\r\nalice\r\nset a 0 0 11\r\nalice wrong\r\n")
        exchange(proto, tr, LOGIN)
        stats = exchange(proto, tr, b"stats\r\n")
        assert b"STAT auth_cmds 2\r\n" in stats and b"STAT auth_errors 1\r\n" in stats
        settings = exchange(proto, tr, b"stats settings\r\n")
        assert b"STAT auth_enabled_ascii /etc/objmail/blob-auth\r\n" in settings
    finally:
        h.close()


def test_no_auth_table_serves_at_once(tmp_path: Path) -> None:
    """Without an auth file the first command is served (no gate, no small limits)."""
    harness = Harness(tmp_path)
    try:
        proto, tr = harness.connect()
        assert exchange(proto, tr, b"get k\r\n") == b"END\r\n"
        assert proto.parser.limits == harness.factory.limits
    finally:
        harness.close()


def test_refusals_serialize_as_memcached_lines() -> None:
    """The refusal replies are exactly memcached's lines."""
    assert serialize(E_UNAUTHENTICATED) == UNAUTH
    assert serialize(E_AUTH_FAILURE) == FAILURE


def test_binary_protocol_never_authenticates(h: Harness) -> None:
    """The binary protocol (and its SASL) is not spoken: a binary SASL request gets ERROR
    and the connection closes, as it does after login."""
    proto, tr = h.connect()
    # A binary-protocol SASL LIST MECHS request header (magic 0x80, opcode 0x20).
    proto.dataReceived(bytes([0x80, 0x20]) + bytes(22))
    assert tr.value() == b"ERROR\r\n"
    assert tr.disconnecting
    assert h.counters.auth_cmds == 0


def test_http_request_before_login_closes_silently(h: Harness) -> None:
    """An HTTP request line closes the connection without a word, before login as
    after (memcached does the same)."""
    proto, tr = h.connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert tr.value() == b""
    assert tr.disconnecting
