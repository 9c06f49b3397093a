"""objstored as a real process with memcached's authentication and with TLS: the same
replies as memcached 1.6's ``-Y``, real clients with and without credentials, TLS
clients with and without certificates, and the start-up refusals."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError

from director.memcache_client import NodeAccess
from objstore.auth import auth_request
from runtime.tls import client_context
from tests.objstore_process import REPO, Objstored, free_port, objstored
from tests.tls_support import TlsFiles, make_certificates

pytestmark = pytest.mark.system

USER, PASSWORD = "alice", "s3cret"
ACCESS = NodeAccess(USER, PASSWORD)
UNAUTH = b"CLIENT_ERROR unauthenticated\r\n"


def write_auth_file(directory: Path, text: str = f"{USER}:{PASSWORD}\nbob:pw2\n",
                    mode: int = 0o600) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "blob-auth"
    path.write_text(text)
    path.chmod(mode)
    return path


def login() -> bytes:
    return b"".join(auth_request(USER, PASSWORD))


def talk(sock: socket.socket, steps: list[bytes], quiet: float = 0.08) -> list[bytes]:
    """Send each step and collect what arrives until the server is quiet (or closes:
    ``<EOF>``)."""
    out = []
    for step in steps:
        sock.sendall(step)
        time.sleep(0.01)
        sock.settimeout(quiet)
        got = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    got += b"<EOF>"
                    break
                got += chunk
        except TimeoutError:
            pass
        out.append(got)
        if got.endswith(b"<EOF>"):
            break
    return out


def read_until(sock: socket.socket | ssl.SSLSocket, end: bytes, timeout: float = 30.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while not out.endswith(end):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        out += chunk
    return out


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Objstored]:
    tmp = tmp_path_factory.mktemp("auth")
    with objstored(tmp, auth_file=str(write_auth_file(tmp)), access=ACCESS) as s:
        yield s


# -- the same replies as memcached -Y ---------------------------------------------------

#: One connection each: memcached 1.6.18 answers only the first of pipelined
#: unauthenticated commands, so every step waits for its reply.
AUTH_SCRIPTS = [
    [b"get foo\r\n", b"version\r\n"],
    [b"delete foo\r\n", b"lru_crawler metadump all\r\n", b"stats\r\n", b"mg foo v\r\n"],
    [b"set a 0 0 11\r\nalice wrong\r\n", b"get a\r\n"],
    [b"set a 0 0 5\r\nalice\r\n", b"get a\r\n"],
    [b"set a 0 0 10\r\nalice s3cret", b"get a\r\n"],
    [b"set a 0 0 13\r\nalice s3cret\n\r\n", b"get a\r\n"],
    [b"add a 0 0 12\r\nalice s3cret\r\n", b"get a\r\n"],
    [b"set a 0 0 -1\r\n", b"get a\r\n"],
    [b"set a 0 0 12 noreply\r\nalice s3cret\r\n", b"get missing\r\n"],
    [b"set a 0 0 13\r\nalice  s3cret\r\n", b"get missing\r\n"],
    [b"set a 0 0 14\r\nalice s3cret x\r\n", b"get missing\r\n"],
    [b"set a 0 0 11\r\nalice wrong\r\n", b"set a 0 0 7\r\nbob pw2\r\n",
     b"set k 0 0 2\r\nhi\r\n", b"get k\r\n", b"delete k\r\n"],
]


def test_same_replies_as_memcached_with_authfile(tmp_path: Path) -> None:
    """Unauthenticated commands, wrong and malformed logins and good ones get the same
    bytes from objstored as from Debian's memcached 1.6 run with ``-Y`` on the same file."""
    exe = shutil.which("memcached") or "/usr/bin/memcached"
    assert os.path.exists(exe), "memcached is required for the interop test"
    path = write_auth_file(tmp_path / "secrets")
    port = free_port()
    args = [exe, "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-t", "1", "-m", "64",
            "-Y", str(path)]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    mcd = subprocess.Popen(args)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        theirs = []
        for script in AUTH_SCRIPTS:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                theirs.append(talk(sock, script))
    finally:
        mcd.terminate()
        mcd.wait(10)
    with objstored(tmp_path / "ours", auth_file=str(path), access=ACCESS) as s:
        ours = []
        for script in AUTH_SCRIPTS:
            with s.connect() as sock:
                ours.append(talk(sock, script))
    assert ours == theirs
    assert theirs[0] == [UNAUTH, UNAUTH]  # the script did exercise the gate


# -- clients --------------------------------------------------------------------------


@pytest.mark.parametrize(("request_", "reply"), [
    (b"get k\r\n", UNAUTH),
    (b"gets k\r\n", UNAUTH),
    (b"delete k\r\n", UNAUTH),
    (b"lru_crawler metadump all\r\n", UNAUTH),
    (b"add k 0 0 5\r\nhello\r\n", UNAUTH),
    # Before authentication a set is a login, as in memcached: refused unless it is one.
    (b"set k 0 0 5\r\nhello\r\n", b"CLIENT_ERROR bad authentication token format\r\n"),
    (b"set k 0 0 11\r\nhello world\r\n", b"CLIENT_ERROR authentication failure\r\n"),
])
def test_unauthenticated_client_is_refused(auth_server: Objstored, request_: bytes,
                                           reply: bytes) -> None:
    """get, set, delete and metadump from a client that did not authenticate are refused
    with memcached's words, and nothing is stored."""
    with auth_server.connect() as sock:
        sock.sendall(request_)
        assert read_until(sock, b"\r\n", timeout=5) == reply
    mc = Client((auth_server.host, auth_server.port), timeout=5)
    mc.set("login", f"{USER} {PASSWORD}", noreply=False)
    assert mc.get("k") is None
    mc.close()


def test_wrong_password_is_refused(auth_server: Objstored) -> None:
    """A wrong password gets CLIENT_ERROR authentication failure and no access."""
    with auth_server.connect() as sock:
        sock.sendall(b"set a 0 0 11\r\nalice wrong\r\nget a\r\n")
        got = read_until(sock, UNAUTH, timeout=5)
    assert got == b"CLIENT_ERROR authentication failure\r\n" + UNAUTH


def test_pymemcache_with_credentials(auth_server: Objstored) -> None:
    """pymemcache works once its first command is a set of "user password"; without it
    every command fails with the server's refusal."""
    mc = Client((auth_server.host, auth_server.port), timeout=5, default_noreply=False)
    try:
        assert mc.set("any-key", f"{USER} {PASSWORD}")
        assert mc.set("greeting", b"hello")
        assert mc.get("greeting") == b"hello"
        assert mc.get_many(["greeting", "nope"]) == {"greeting": b"hello"}
        assert mc.delete("greeting")
        assert mc.get("any-key") is None  # the login stored nothing
    finally:
        mc.close()
    anonymous = Client((auth_server.host, auth_server.port), timeout=5)
    try:
        with pytest.raises(MemcacheClientError, match="unauthenticated"):
            anonymous.get("greeting")
    finally:
        anonymous.close()


def test_libmemcached_tools_cannot_authenticate(auth_server: Objstored, tmp_path: Path) -> None:
    """libmemcached 1.1's memccp/memccat cannot log in with the text protocol (their
    --username/--password are binary SASL, which objstored does not speak): they are
    refused, with or without credentials."""
    memcp = shutil.which("memcp") or shutil.which("memccp")
    memcat = shutil.which("memcat") or shutil.which("memccat")
    if memcp is None or memcat is None:
        pytest.skip("libmemcached-tools missing")
    servers = f"--servers={auth_server.address}"
    src = tmp_path / "file.txt"
    src.write_bytes(b"payload\n")
    for creds in ([], ["--username", USER, "--password", PASSWORD]):
        put = subprocess.run([memcp, servers, *creds, str(src)], capture_output=True,
                             timeout=30)
        assert put.returncode != 0
    mc = Client((auth_server.host, auth_server.port), timeout=5)
    mc.set("login", f"{USER} {PASSWORD}", noreply=False)
    assert mc.get("file.txt") is None
    mc.set("file.txt", b"stored by pymemcache", noreply=False)
    mc.close()
    got = subprocess.run([memcat, servers, "file.txt"], capture_output=True, timeout=30)
    assert b"stored by pymemcache" not in got.stdout


def test_group_readable_auth_file_exits_78(tmp_path: Path) -> None:
    """objstored refuses to start with an auth file others can read: exit 78, and the
    error names the key and the fix."""
    path = write_auth_file(tmp_path / "secrets", mode=0o640)
    config = tmp_path / "objstored.toml"
    config.write_text(f'[objstore]\nauth_file = "{path}"\nmap_size = 268435456\n'
                      f'[cluster]\nredis_nodes = ["127.0.0.1:{free_port()}"]\n')
    proc = subprocess.run([sys.executable, "-m", "objstore.main", "--config", str(config),
                           "--listen", f"127.0.0.1:{free_port()}", "--data",
                           str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "OBJMAIL_REDIS_NODES": ""})
    assert proc.returncode == 78, proc.stderr
    assert "objstore.auth_file" in proc.stderr and "chmod 600" in proc.stderr


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def tls_client(certs: TlsFiles, with_cert: bool = False) -> ssl.SSLContext:
    return client_context(str(certs.ca), str(certs.client_cert) if with_cert else "",
                          str(certs.client_key) if with_cert else "", prefix="test.")


def tls_connect(server: Objstored, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection((server.host, server.port), timeout=10)
    return context.wrap_socket(raw, server_hostname=server.host)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory,
               certs: TlsFiles) -> Iterator[Objstored]:
    with objstored(tmp_path_factory.mktemp("tls-server"), tls_cert=str(certs.server_cert),
                   tls_key=str(certs.server_key), max_item_size=4 * 1024 * 1024,
                   access=NodeAccess(tls=tls_client(certs))) as s:
        yield s


def test_tls_serves_a_tls_client_and_refuses_plaintext(tls_server: Objstored,
                                                        certs: TlsFiles) -> None:
    """With a certificate objstored serves TLS clients; a plaintext client gets no
    memcached reply."""
    with tls_connect(tls_server, tls_client(certs)) as sock:
        sock.sendall(b"set k 0 0 2\r\nhi\r\nget k\r\n")
        assert read_until(sock, b"END\r\n") == b"STORED\r\nVALUE k 0 2\r\nhi\r\nEND\r\n"
    with tls_server.connect() as plain:
        plain.sendall(b"get k\r\n")
        plain.settimeout(5)
        try:
            got = plain.recv(1024)
        except (ConnectionResetError, TimeoutError):
            got = b""
        assert b"VALUE" not in got and b"END" not in got


def test_tls_large_pipelined_replies_arrive_intact(tls_server: Objstored,
                                                   certs: TlsFiles) -> None:
    """Megabytes of pipelined replies arrive intact over TLS: replies are never written
    to the raw socket under the TLS layer (the plain-TCP direct-write path)."""
    values = {f"big{i}".encode(): os.urandom(512 * 1024 + i) for i in range(8)}
    with tls_connect(tls_server, tls_client(certs)) as sock:
        for key, value in values.items():
            sock.sendall(b"set %s 0 0 %d\r\n" % (key, len(value)) + value + b"\r\n")
            assert read_until(sock, b"\r\n") == b"STORED\r\n"
        rounds = 6
        request = b"".join(b"get %s\r\n" % key for key in values) * rounds
        sock.sendall(request)
        expected = b"".join(b"VALUE %s 0 %d\r\n" % (key, len(v)) + v + b"\r\nEND\r\n"
                            for key, v in values.items()) * rounds
        got = b""
        deadline = time.monotonic() + 60
        while len(got) < len(expected) and time.monotonic() < deadline:
            sock.settimeout(10)
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
    assert got == expected


def test_tls_with_ca_requires_client_certificate(tmp_path: Path, certs: TlsFiles) -> None:
    """With tls_ca a client presenting a certificate the CA signed is served; one without
    a certificate is refused at the handshake (TLS 1.3: at its first read)."""
    with objstored(tmp_path, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key),
                   tls_ca=str(certs.ca),
                   access=NodeAccess(tls=tls_client(certs, with_cert=True))) as s:
        with tls_connect(s, tls_client(certs, with_cert=True)) as sock:
            sock.sendall(b"get k\r\n")
            assert read_until(sock, b"END\r\n") == b"END\r\n"
        with (pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
              tls_connect(s, tls_client(certs)) as sock):
            sock.sendall(b"get k\r\n")
            got = read_until(sock, b"END\r\n", timeout=10)
            assert got == b"", got  # closed without a reply: counts as refused
            raise ConnectionResetError("closed without a reply")


def test_tls_and_auth_together(tmp_path: Path, certs: TlsFiles) -> None:
    """Authentication runs inside TLS: a TLS client must still log in."""
    path = write_auth_file(tmp_path / "secrets")
    with (objstored(tmp_path, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key),
                    auth_file=str(path),
                    access=NodeAccess(USER, PASSWORD, tls_client(certs))) as s,
          tls_connect(s, tls_client(certs)) as sock):
        sock.sendall(b"get k\r\n")
        assert read_until(sock, b"\r\n") == UNAUTH
        sock.sendall(login() + b"get k\r\n")
        assert read_until(sock, b"END\r\n") == b"STORED\r\nEND\r\n"
