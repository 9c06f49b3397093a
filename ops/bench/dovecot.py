"""A private Dovecot (Debian's dovecot-imapd and dovecot-lmtpd): the reference server that
the benchmarks and the differential tests compare objmail with.

:class:`PrivateDovecot` writes a throw-away configuration under a fresh temporary
directory — IMAP and LMTP on free loopback ports, mail in maildir, users in a passwd-file
with plaintext passwords, its own ``base_dir`` so it never meets the system's Dovecot —
starts ``dovecot -F`` and, whatever happens, stops it and removes the directory. As a
context manager::

    with PrivateDovecot(["alice", "bob"], password="secret") as dovecot:
        imaplib.IMAP4("127.0.0.1", dovecot.imap_port).login("alice", "secret")

Run as root, Dovecot refuses to give mail access to root, so mail belongs to ``nobody``
(the temporary directory is made traversable for it); otherwise everything runs as the
current user. Dovecot's own defaults are kept where they matter for speed: ``mail_fsync =
optimized`` (a delivered message is fsync'd before LMTP answers 250), a login process per
connection.
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ops.launcher import free_port

__all__ = ["DOVECOT", "DovecotError", "PrivateDovecot", "dovecot_installed"]

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


class DovecotError(RuntimeError):
    """Dovecot did not start (the message holds its log)."""


def dovecot_installed() -> bool:
    """Whether a ``dovecot`` binary is there to run."""
    return Path(DOVECOT).exists()



def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_of(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


class PrivateDovecot:
    """One private Dovecot instance over a temporary maildir tree.

    :param users: the accounts of the passwd-file, all with ``password``.
    :param protocols: Dovecot protocols to serve (``imap``, ``lmtp``).
    :param start_timeout: seconds to wait for the IMAP port to greet.
    """

    def __init__(self, users: Sequence[str], *, password: str = "secret",
                 protocols: Sequence[str] = ("imap", "lmtp"),
                 start_timeout: float = 15.0) -> None:
        if not users:
            raise ValueError("a private Dovecot needs at least one user")
        self.users = list(users)
        self.password = password
        self.protocols = tuple(protocols)
        self.start_timeout = start_timeout
        # Not a private temp dir of ours alone: as root, the mail processes run as
        # nobody and must reach the maildirs.
        self.root = Path(tempfile.mkdtemp(prefix="objmail-dovecot-"))
        self.root.chmod(0o711)
        self.imap_port = free_port()
        self.lmtp_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            self.login_user = "dovenull" if _user_exists("dovenull") else "nobody"
            self.internal_user = "root"
            nobody = pwd.getpwnam("nobody") if _user_exists("nobody") else None
            self.mail_uid = nobody.pw_uid if nobody else 65534
            self.mail_gid = nobody.pw_gid if nobody else 65534
        else:
            self.login_user = self.internal_user = getpass.getuser()
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()
        try:
            self._write_tree()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    # -- files ------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    def maildir(self, user: str) -> Path:
        """The maildir of ``user`` (``cur``, ``new``, ``tmp`` exist from the start)."""
        return self.root / "mail" / user

    def put_message(self, user: str, filename: str, raw: bytes) -> Path:
        """Place ``raw`` in ``user``'s INBOX as maildir file ``filename`` (in ``cur``,
        no flags), as a local delivery agent would; Dovecot sees it at the next SELECT."""
        path = self.maildir(user) / "cur" / f"{filename}:2,"
        path.write_bytes(raw)
        self._chown(path)
        return path

    def log(self) -> str:
        """Dovecot's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.mail_uid, self.mail_gid)

    def _write_tree(self) -> None:
        for sub in ("run", "state", "home"):
            (self.root / sub).mkdir()
        (self.root / "mail").mkdir()
        self._chown(self.root / "mail")
        self._chown(self.root / "home")
        lines = []
        for user in self.users:
            if ":" in user or "\n" in user:
                raise ValueError(f"invalid passwd-file user name {user!r}")
            home = self.root / "home" / user
            for path in (self.maildir(user), home):
                path.mkdir()
                self._chown(path)
            for sub in ("cur", "new", "tmp"):
                (self.maildir(user) / sub).mkdir()
                self._chown(self.maildir(user) / sub)
            lines.append(f"{user}:{{PLAIN}}{self.password}:{self.mail_uid}:{self.mail_gid}"
                         f"::{home}::\n")
        (self.root / "passwd").write_text("".join(lines))
        (self.root / "dovecot.conf").write_text(self.config_text())

    def config_text(self) -> str:
        """The whole ``dovecot.conf``."""
        root = self.root
        return f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = {" ".join(self.protocols)}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
# LMTP recipients are user@domain; the passwd-file holds bare names.
auth_username_format = %Ln
default_internal_user = {self.internal_user}
default_internal_group = {_group_of(self.internal_user)}
default_login_user = {self.login_user}
first_valid_uid = 0
first_valid_gid = 0
mail_location = maildir:{root}/mail/%n
postmaster_address = postmaster@localhost
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {root}/passwd
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
service anvil {{
  chroot =
}}
"""

    # -- the process ------------------------------------------------------------------

    def start(self) -> None:
        """Run Dovecot and wait until IMAP (and LMTP, if served) greet.

        :raises DovecotError: it exited or did not greet in time; the log is attached.
        """
        self._proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ports = [self.imap_port] + ([self.lmtp_port] if "lmtp" in self.protocols else [])
        deadline = time.monotonic() + self.start_timeout
        for port in ports:
            while True:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode(errors="replace") \
                        if self._proc.stderr else ""
                    raise DovecotError(f"dovecot exited ({self._proc.returncode}): {err}"
                                       f"{self.log()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                        if sock.recv(64):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise DovecotError(f"dovecot did not greet on port {port} within "
                                       f"{self.start_timeout:.0f}s: {self.log()}")
                time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        """The master process id while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def stop(self) -> None:
        """Stop Dovecot (its master takes every child down); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def cleanup(self) -> None:
        """Stop, then remove the whole temporary tree."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateDovecot:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()
