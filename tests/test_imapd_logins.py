"""Failed-login limits: the pure window arithmetic, the Redis limiter shared by several
"processes", and two real imapd processes refusing a guessed account with the exact
IMAP and POP3 replies."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from director.redisconn import ClusterRunner, RetryPolicy, new_cluster_client
from imapd.logins import (
    LIMITED_TEXT,
    LoginsLimited,
    NoLoginLimit,
    RedisLoginLimiter,
    address_subject,
    authenticate,
    estimate,
    user_subject,
    window_keys,
)
from metadata.records import User
from tests.conftest import RunningRedis, SessionCluster, free_port_block
from tests.imapd_process import Imapd, Mail, self_signed, start_imapd

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("peer", "subject"), [
    ("203.0.113.9:4431", "203.0.113.9"),
    ("2001:db8:1:2:3:4:5:6:993", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:aaaa::1:50000", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.1:143", "198.51.100.1"),
    ("[2001:db8::1]:143", "2001:db8::/64"),
    ("-", "-"),
])
def test_address_subject(peer: str, subject: str) -> None:
    """IPv4 clients are counted per address, IPv6 ones per /64, mapped IPv4 as IPv4."""
    assert address_subject(peer) == subject


def test_user_subject_folds_case_and_hides_the_name() -> None:
    """Names that log in to the same account count together; the key does not show it."""
    assert user_subject("Alice") == user_subject("alice") != user_subject("alicE2")
    assert "alice" not in user_subject("alice") and len(user_subject("x" * 5000)) == 24


def test_window_keys_and_estimate() -> None:
    """The current and previous windows' counters, and the sliding estimate that weights
    the previous one by how much of it is still inside the last window."""
    keys = window_keys("objmail:", "ip", "203.0.113.9", 1250.0, 100.0)
    assert keys.current == "objmail:login:ip:{203.0.113.9}:12"
    assert keys.previous == "objmail:login:ip:{203.0.113.9}:11"
    assert keys.elapsed == pytest.approx(0.5)
    assert estimate(2, 6, 0.5) == 5.0
    assert estimate(0, 6, 0.0) == 6.0 and estimate(3, 6, 0.999) == pytest.approx(3.006)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(redis: RunningRedis, prefix: str, clock: Clock, *, user_limit: int = 3,
            address_limit: int = 0, window: float = 100.0) -> RedisLoginLimiter:
    """One process's limiter: its own Redis client, like each imapd."""
    return RedisLoginLimiter(ClusterRunner(redis.client(), retry=RetryPolicy(deadline=5)),
                             prefix, user_limit=user_limit, address_limit=address_limit,
                             window=window, clock=clock)


def test_failures_counted_by_one_process_limit_another(redis_cluster: RunningRedis) -> None:
    """Failures counted by one limiter refuse the account on another sharing the Redis
    Cluster, from any address; other accounts are untouched; the limit slides away."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    clock = Clock(1_000_000.0)

    async def go() -> list[bool]:
        a, b = limiter(redis_cluster, prefix, clock), limiter(redis_cluster, prefix, clock)
        try:
            seen = [await b.allowed("198.51.100.1:1", "Victim")]
            for _ in range(3):
                await a.failed("198.51.100.1:1", "victim")
            seen += [await b.allowed("192.0.2.7:2", "VICTIM"),
                     await b.allowed("192.0.2.7:2", "bystander")]
            clock.now += 150  # half of the failures' window still overlaps: 1.5 < 3
            seen.append(await b.allowed("192.0.2.7:2", "victim"))
            clock.now += 100
            seen.append(await a.allowed("192.0.2.7:2", "victim"))
            return seen
        finally:
            await a.aclose()
            await b.aclose()

    assert asyncio.run(go()) == [True, False, True, True, True]


def test_address_limit_covers_a_whole_ipv6_64(redis_cluster: RunningRedis) -> None:
    """Failures for different accounts from one IPv6 /64 refuse every account from that
    /64, while another network still gets in."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    clock = Clock(2_000_000.0)

    async def go() -> list[bool]:
        lim = limiter(redis_cluster, prefix, clock, user_limit=0, address_limit=2)
        try:
            await lim.failed("2001:db8:5:6::1:4000", "a")
            await lim.failed("2001:db8:5:6::2:4001", "b")
            return [await lim.allowed("2001:db8:5:6:ffff::9:4002", "c"),
                    await lim.allowed("2001:db8:5:7::1:4003", "c")]
        finally:
            await lim.aclose()

    assert asyncio.run(go()) == [False, True]


def test_unreachable_redis_lets_logins_through() -> None:
    """Without Redis the limiter neither blocks logins nor fails them: it gives up after
    its short deadline and counts the miss."""
    port = free_port_block(1)

    async def go() -> tuple[bool, int, float]:
        runner = ClusterRunner(new_cluster_client([f"127.0.0.1:{port}"], socket_timeout=0.1),
                               retry=RetryPolicy(deadline=0.3))
        lim = RedisLoginLimiter(runner, "t:", user_limit=1, address_limit=1, window=60)
        t0 = time.monotonic()
        try:
            await lim.failed("192.0.2.1:1", "u")
            return await lim.allowed("192.0.2.1:1", "u"), lim.stats.unavailable, \
                time.monotonic() - t0
        finally:
            await lim.aclose()

    allowed, misses, elapsed = asyncio.run(go())
    assert allowed and misses == 2 and elapsed < 5


class Users:
    """The password check, as ``metadata.users.Users.authenticate`` answers it."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    async def authenticate(self, name: str, password: str) -> User | None:
        self.checked.append(name)
        if password != "right":
            return None
        return User(id=1, name=name, quota_bytes=0, used_bytes=0, message_count=0,
                    created_at=dt.datetime.now(dt.UTC))


class Counting(NoLoginLimit):
    def __init__(self, limited: bool) -> None:
        self.limited = limited
        self.failures: list[tuple[str, str]] = []

    async def allowed(self, peer: str, user: str) -> bool:
        return not self.limited

    async def failed(self, peer: str, user: str) -> None:
        self.failures.append((peer, user))


def test_authenticate_counts_failures_only_and_skips_limited_passwords() -> None:
    """A wrong password is counted, a right one is not; while limited, the password is
    not even checked (a guess cannot succeed) and LoginsLimited is raised."""
    users, counting = Users(), Counting(limited=False)

    async def go() -> None:
        assert await authenticate(users, counting, "p:1", "u", "wrong") is None
        assert (await authenticate(users, counting, "p:1", "u", "right")) is not None
        assert counting.failures == [("p:1", "u")]
        counting.limited = True
        with pytest.raises(LoginsLimited):
            await authenticate(users, counting, "p:1", "u", "right")
        assert users.checked == ["u", "u"]

    asyncio.run(go())


# -- two real imapd processes ------------------------------------------------------------


#: The limited imapds' window, long enough for a loaded machine to make the guesses and
#: the refused attempts inside one.
WINDOW = 6.0


def sleep_into_next_window(after: float = 0.05) -> int:
    """Sleep until ``after`` seconds into the next window; its number (the limiter's
    windows are fixed, numbered from the epoch by the wall clock)."""
    number = int(time.time() // WINDOW) + 1
    time.sleep(max(0.0, number * WINDOW + after - time.time()))
    return number


@pytest.fixture(scope="module")
def limited_imapds(test_cluster: SessionCluster, storage_cluster: object,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Imapd, Imapd]]:
    """Two imapd processes on the session's cluster limiting accounts to 3 failed logins
    per WINDOW seconds (no per-address limit: the whole session logs in from 127.0.0.1)."""
    tls = self_signed(tmp_path_factory.mktemp("tls-logins"))
    settings = {"login_fail_limit": 3, "login_fail_limit_ip": 0, "login_fail_window": WINDOW,
                "login_delay": 0.0}
    first = start_imapd(test_cluster, "imapd-limit-a", tls, **settings)
    try:
        second = start_imapd(test_cluster, "imapd-limit-b", tls, **settings)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def exchange(port: int, lines: list[bytes], greeting: bytes) -> list[bytes]:
    """Send each line on a fresh connection's plaintext port, one reply line each."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(greeting)
        replies = []
        for line in lines:
            sock.sendall(line + b"\r\n")
            replies.append(reader.readline().rstrip(b"\r\n"))
        return replies


def test_guessing_on_one_imapd_is_refused_by_the_other(
        limited_imapds: tuple[Imapd, Imapd], test_cluster: SessionCluster) -> None:
    """Three wrong passwords on one process make the other refuse the account, even with
    the right password, with "NO [UNAVAILABLE]" (IMAP) and "-ERR [SYS/TEMP]" (POP3);
    another account logs in meanwhile; the limit lifts once the window has slid past."""
    first, second = limited_imapds
    mail = Mail(test_cluster.config)
    bystander = f"ok{uuid.uuid4().hex[:8]}"
    mail.create_user(bystander)
    # The sliding estimate weights the previous window by what of it is left, so three
    # failures late in one window fall below the limit just after the boundary.  The
    # guesses and the refusals are therefore made inside one window, and tried again
    # with a new account if a loaded machine made them straddle a boundary.
    for _attempt in range(3):
        victim = f"lim{uuid.uuid4().hex[:8]}"
        mail.create_user(victim)
        window = sleep_into_next_window()
        wrong = [f"a{i} LOGIN {victim} guess{i}".encode() for i in range(3)]
        guessed = exchange(first.imap_port, wrong, b"* OK")
        imap = exchange(second.imap_port, [f"b1 LOGIN {victim} secret".encode()], b"* OK")
        pop3 = exchange(second.pop3_port, [f"USER {victim}".encode(), b"PASS secret"],
                        b"+OK")
        if int(time.time() // WINDOW) == window:
            break
    else:
        pytest.fail(f"three tries each took longer than one {WINDOW} s window")
    assert guessed == [
        f"a{i} NO [AUTHENTICATIONFAILED] Authentication failed".encode() for i in range(3)]
    assert imap == [f"b1 NO [UNAVAILABLE] {LIMITED_TEXT}".encode()]
    assert pop3 == [b"+OK Send PASS", f"-ERR [SYS/TEMP] {LIMITED_TEXT}".encode()]
    ok = exchange(second.imap_port, [f"c1 LOGIN {bystander} secret".encode()], b"* OK")
    assert ok[0].startswith(b"c1 OK ")
    # A sixth into the next window, the three failures weigh 3 * 5/6 < 3: the limit lifts.
    sleep_into_next_window(after=WINDOW / 6)
    ok = exchange(first.imap_port, [f"d1 LOGIN {victim} secret".encode()], b"* OK")
    assert ok[0].startswith(b"d1 OK "), ok


def test_successful_logins_never_count(limited_imapds: tuple[Imapd, Imapd],
                                       test_cluster: SessionCluster) -> None:
    """An account logging in correctly more often than the failure limit stays usable."""
    first, second = limited_imapds
    user = f"many{uuid.uuid4().hex[:8]}"
    Mail(test_cluster.config).create_user(user)
    for n in range(6):
        imapd = first if n % 2 else second
        reply = exchange(imapd.imap_port, [f"e{n} LOGIN {user} secret".encode()], b"* OK")
        assert reply[0].startswith(f"e{n} OK ".encode()), reply
