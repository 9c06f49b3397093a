"""End to end against a real imapd process over real PostgreSQL, Redis Cluster and object
servers: COMPRESS=DEFLATE from a raw-socket client doing raw DEFLATE with the stdlib's zlib
(imaplib has no COMPRESS), in cleartext, where replies leave by the direct socket write,
and inside TLS (IMAPS); BINARY (RFC 3516) of every leaf part of the corpus messages with
an encoding, byte for byte against Python's email package (over COMPRESS as well);
CATENATE (RFC 4469) as its example runs it, synchronizing literals between URL parts."""

from __future__ import annotations

import re
import socket
import ssl
import time
import zlib
from typing import Any

import pytest

from metadata.sections import imap_view
from tests.binary_oracle import IDENTITY, OraclePart, oracle_parts
from tests.conftest import CORPUS
from tests.corpus_features import feature_rows
from tests.imapd_process import Imapd, Mail, imapd_fixtures, imaps_context
from tests.imapd_support import ATTACHMENT, PICTURE, corpus

pytestmark = pytest.mark.timeout(120)

cluster, certificate, imapd, mail = imapd_fixtures("imapd-ext")


def new_user(mail: Mail, label: str) -> str:
    name = f"{label}{time.time_ns() % 10**12}"
    mail.create_user(name)
    return name


class DeflateClient:
    """A line-at-a-time IMAP client over a socket that can switch to raw DEFLATE."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.compressor: Any = None
        self.decompressor: Any = None
        self.buffer = b""
        self.received = 0  # octets off the socket (compressed, once compressing)

    def send(self, data: bytes) -> None:
        if self.compressor is not None:
            data = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.received += len(chunk)
        if self.decompressor is not None:
            chunk = self.decompressor.decompress(chunk)
        self.buffer += chunk

    def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out

    def readline(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line + b"\r\n"

    def command(self, tag: str, text: bytes) -> list[bytes]:
        """Send ``tag text``; every line and literal until the tagged answer."""
        self.send(tag.encode() + b" " + text + b"\r\n")
        out = []
        while True:
            line = self.readline()
            out.append(line)
            found = re.search(rb"~?\{(\d+)\}\r\n$", line)
            if found:
                out.append(self.read_exactly(int(found.group(1))))
                continue
            if line.startswith(tag.encode() + b" "):
                return out

    def compress(self) -> bytes:
        self.send(b"z COMPRESS DEFLATE\r\n")
        answer = self.readline()  # the OK itself is not compressed
        assert not self.buffer, "the server sent something compressed before we asked"
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.decompressor = zlib.decompressobj(-15)
        return answer


def literals(answer: list[bytes]) -> list[bytes]:
    """The literals of an answer from :meth:`DeflateClient.command`."""
    return [answer[i + 1] for i, line in enumerate(answer[:-1])
            if re.search(rb"~?\{\d+\}\r\n$", line)]


def session(imapd: Imapd, user: str, client: DeflateClient) -> None:
    """Log in, COMPRESS, then APPEND, FETCH and pipelined commands, all compressed."""
    assert client.readline().startswith(b"* OK")
    login = client.command("a", f"LOGIN {user} secret".encode())[-1]
    assert login.startswith(b"a OK [CAPABILITY ") and b"COMPRESS=DEFLATE" in login
    assert client.compress() == b"z OK DEFLATE active\r\n"
    assert client.command("y", b"COMPRESS DEFLATE")[-1] == (
        b"y NO [COMPRESSIONACTIVE] DEFLATE is active already\r\n")
    raw = corpus(PICTURE)
    client.send(b"b APPEND INBOX {%d}\r\n" % len(raw))
    assert client.readline().startswith(b"+ ")
    client.send(raw + b"\r\n")
    assert client.readline().startswith(b"b OK [APPENDUID ")
    assert client.command("c", b"SELECT INBOX")[-1].startswith(b"c OK [READ-WRITE]")
    before = client.received
    fetched = client.command("d", b"FETCH 1:2 (UID BODY.PEEK[])")
    bodies = literals(fetched)
    assert sorted(bodies) == sorted([imap_view(corpus(ATTACHMENT)), imap_view(raw)])
    assert fetched[-1] == b"d OK FETCH completed\r\n"
    # The 42 KB of base64 and the 79 KB message took fewer octets on the wire.
    assert client.received - before < sum(map(len, bodies))
    # Pipelined, in one compressed burst: answered in order, each burst inflatable.
    client.send(b"e NOOP\r\nf STORE 1 +FLAGS (\\Flagged)\r\ng LOGOUT\r\n")
    lines = [client.readline() for _ in range(5)]
    assert lines[0] == b"e OK NOOP completed\r\n"
    assert lines[1].startswith(b"* 1 FETCH (FLAGS (\\Flagged")
    assert lines[2].startswith(b"f OK ")
    assert lines[3].startswith(b"* BYE") and lines[4].startswith(b"g OK")


def test_compress_deflate_over_a_raw_socket(imapd: Imapd, mail: Mail) -> None:
    """In cleartext (replies take imapd's direct socket write when nothing is queued):
    COMPRESS's OK arrives plain, everything after it is raw DEFLATE both ways, a second
    COMPRESS is NO [COMPRESSIONACTIVE], bodies come back exact and smaller on the wire."""
    user = new_user(mail, "deflate")
    mail.deliver(user, [corpus(ATTACHMENT)])
    with socket.create_connection(("127.0.0.1", imapd.imap_port), timeout=10) as sock:
        session(imapd, user, DeflateClient(sock))
    assert f"DEFLATE on for {user}" in imapd.log()


def test_compress_deflate_inside_tls(imapd: Imapd, mail: Mail) -> None:
    """Over IMAPS the same session works: compression runs inside TLS."""
    user = new_user(mail, "deflatetls")
    mail.deliver(user, [corpus(ATTACHMENT)])
    raw_sock = socket.create_connection(("127.0.0.1", imapd.imaps_port), timeout=10)
    with imaps_context().wrap_socket(raw_sock, server_hostname="localhost") as sock:
        assert isinstance(sock, ssl.SSLSocket)
        session(imapd, user, DeflateClient(sock))


def test_garbage_after_compress_ends_the_connection(imapd: Imapd, mail: Mail) -> None:
    """Octets that are not raw DEFLATE after COMPRESS get a (compressed) BYE and the
    connection is closed; the server goes on serving others."""
    user = new_user(mail, "deflatebad")
    with socket.create_connection(("127.0.0.1", imapd.imap_port), timeout=10) as sock:
        client = DeflateClient(sock)
        client.readline()
        client.command("a", f"LOGIN {user} secret".encode())
        client.compress()
        sock.sendall(b"\xff\xff\xff\xff plain text is not deflate\r\n")
        assert client.readline() == b"* BYE Invalid compressed data\r\n"
        with pytest.raises(ConnectionError):
            client.readline()
    with socket.create_connection(("127.0.0.1", imapd.imap_port), timeout=10) as sock:
        client = DeflateClient(sock)
        assert client.readline().startswith(b"* OK")


#: Corpus messages with a part in some transfer encoding.
_ENCODED = frozenset({"base64", "quoted-printable", "8bit", "binary", "nul-bytes", "uuencode"})
ENCODED_ROWS = [row for row in feature_rows() if _ENCODED & set(row["features"].split(","))]


def part_number(part: OraclePart) -> bytes:
    return ".".join(map(str, part.number)).encode()


def batches(parts: list[OraclePart], size: int = 200) -> list[list[OraclePart]]:
    return [parts[i:i + size] for i in range(0, len(parts), size)]


@pytest.fixture(scope="module")
def corpus_box(imapd: Imapd, mail: Mail) -> tuple[str, dict[str, int]]:
    """One user holding every message of :data:`ENCODED_ROWS`, and their UIDs by path."""
    user = new_user(mail, "binary")
    paths = [f"{row['source']}/{row['path']}" for row in ENCODED_ROWS]
    delivered = mail.deliver(user, [(CORPUS / path).read_bytes() for path in paths])
    return user, {path: d.uid for path, d in zip(paths, delivered, strict=True)}


@pytest.mark.parametrize("row", ENCODED_ROWS,
                         ids=[f"{r['path']}[{r['features']}]" for r in ENCODED_ROWS])
def test_binary_of_corpus_parts_matches_the_email_package(
        imapd: Imapd, corpus_box: tuple[str, dict[str, int]], row: dict[str, str]) -> None:
    """For each leaf part that Python's email and the server delimit alike (BODY[n] is the
    part's content as email parsed it): BINARY.PEEK[n] is what email decodes, a literal8
    exactly when it holds a NUL, and BINARY.SIZE[n] its length; a part in an encoding
    other than base64, quoted-printable or an identity is NO [UNKNOWN-CTE].  Where the
    two parsers split a damaged message differently, those parts are not compared (and
    a message with no part in common is skipped, saying so)."""
    user, uids = corpus_box
    path = f"{row['source']}/{row['path']}"
    uid = uids[path]
    parts = oracle_parts((CORPUS / path).read_bytes())
    known = IDENTITY | {"base64", "quoted-printable"}
    with socket.create_connection(("127.0.0.1", imapd.imap_port), timeout=10) as sock:
        client = DeflateClient(sock)
        client.readline()
        client.command("a", f"LOGIN {user} secret".encode())
        client.compress()
        client.command("b", b"EXAMINE INBOX")
        alike = []
        for n, batch in enumerate(batches(parts)):  # some messages have 3,000 parts
            items = b" ".join(b"BODY.PEEK[%s]" % part_number(p) for p in batch)
            answer = client.command(f"c{n}", b"UID FETCH %d (%s)" % (uid, items))
            alike += [part for part, body in zip(batch, literals(answer), strict=True)
                      if body == imap_view(part.raw)]  # else delimited differently
        decodable = [part for part in alike if part.encoding in known]
        for n, batch in enumerate(batches(decodable)):
            tag = f"d{n}"
            items = b" ".join(b"BINARY.PEEK[%s] BINARY.SIZE[%s]" % (part_number(p),
                                                                  part_number(p))
                              for p in batch)
            answer = client.command(tag, b"UID FETCH %d (%s)" % (uid, items))
            assert answer[-1] == f"{tag} OK UID FETCH completed\r\n".encode(), answer[-1]
            assert literals(answer) == [part.decoded for part in batch]
            text = b"".join(answer[i] for i in range(len(answer) - 1)
                            if not (i and re.search(rb"~?\{\d+\}\r\n$", answer[i - 1])))
            assert re.findall(rb"BINARY\[[0-9.]+\] (~?)\{", text) == [
                b"~" if b"\0" in part.decoded else b"" for part in batch]
            assert re.findall(rb"BINARY\.SIZE\[([0-9.]+)\] (\d+)", text) == [
                (part_number(part), b"%d" % len(part.decoded)) for part in batch]
        for n, part in enumerate(p for p in alike if p.encoding not in known):
            tag = f"e{n}"
            answer = client.command(tag, b"UID FETCH %d (BINARY.PEEK[%s])"
                                    % (uid, part_number(part)))
            assert answer == [f"{tag} NO [UNKNOWN-CTE] Unknown Content-Transfer-"
                              f"Encoding {part.encoding}\r\n".encode()], part.number
    compared = len(alike)
    if not compared:
        pytest.skip("Python's email and objmail's parser delimit every part differently")


def test_catenate_as_rfc_4469_runs_it(imapd: Imapd, mail: Mail) -> None:
    """RFC 4469's example over a socket: URL parts and TEXT literals, each literal
    waiting for the server's continuation, make a message that FETCH returns exactly;
    a URL with a UIDVALIDITY that does not match is NO [BADURL ...]."""
    user = new_user(mail, "catenate")
    draft = (b"From: a@example.org\r\nSubject: draft\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=\"--------------030308070208000400050907\""
             b"\r\n\r\n----------------030308070208000400050907\r\n"
             b"Content-Type: text/plain\r\n\r\nthe first part\r\n"
             b"----------------030308070208000400050907--\r\n")
    with socket.create_connection(("127.0.0.1", imapd.imap_port), timeout=10) as sock:
        client = DeflateClient(sock)
        client.readline()
        assert b"CATENATE" in client.command("a", f"LOGIN {user} secret".encode())[-1]
        client.command("b", b"CREATE Drafts")
        client.send(b"c APPEND Drafts (\\Draft) {%d}\r\n" % len(draft))
        assert client.readline().startswith(b"+ ")
        client.send(draft + b"\r\n")
        appended = client.readline()
        found = re.match(rb"c OK \[APPENDUID (\d+) (\d+)\]", appended)
        assert found is not None, appended
        validity, uid = int(found.group(1)), int(found.group(2))
        base = b"/Drafts;UIDVALIDITY=%d/;UID=%d" % (validity, uid)
        text1 = b"\r\n----------------030308070208000400050907\r\n"
        text2 = b"\r\n----------------030308070208000400050907--\r\n"
        client.send(b'A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "%s/;section=HEADER"'
                    b" TEXT {%d}\r\n" % (base, len(text1)))
        assert client.readline().startswith(b"+ ")
        client.send(text1 + b' URL "%s/;section=1.MIME" URL "%s/;section=1" TEXT {%d}\r\n'
                    % (base, base, len(text2)))
        assert client.readline().startswith(b"+ ")
        client.send(text2 + b")\r\n")
        assert client.readline().startswith(b"A003 OK [APPENDUID %d %d]" % (validity, uid + 1))
        header = draft.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"  # section=HEADER
        expected = (header + text1 + b"Content-Type: text/plain\r\n\r\n"  # section=1.MIME
                    + b"the first part" + text2)  # section=1, then the last TEXT
        client.command("d", b"SELECT Drafts")
        answer = client.command("e", b"UID FETCH %d (BODY.PEEK[])" % (uid + 1))
        assert literals(answer) == [expected]
        bad = b'/Drafts;UIDVALIDITY=%d/;UID=%d' % (validity + 1, uid)
        assert client.command("f", b'APPEND Drafts CATENATE (URL "%s")' % bad) == [
            b"f NO [BADURL %s] UIDVALIDITY does not match\r\n" % bad]
