"""directord's plain items on object servers: cas uniques, the ``flush_all`` cut-off, and
the meta command a client's write becomes on the item's primary replica.

Pure: no I/O.  :mod:`director.client` runs what is decided here (see docs/director.md,
"Items: cas, incr and replicas").

Every copy of an item carries the same cas unique, chosen by the directord that wrote it
(``ms ... E<cas>``): unix microseconds shifted left by :data:`CAS_RANDOM_BITS` bits, low
bits random, strictly increasing in one process.  So a ``gets`` answers the same cas from
any replica, a cas unique stays valid when a read fails over, a value once replaced never
comes back with its old cas (no ABA across directords or object servers), and a cas tells
when its value was written, which is how ``flush_all`` (a cut-off time kept in Redis)
hides every item written before it.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from objstore import protocol as p

#: Low bits of a cas unique that are random (two directords writing one key in the
#: same microsecond still differ, almost surely).
CAS_RANDOM_BITS: Final = 10
#: The smallest cas unique that directord chose (2017-07-14): smaller ones tell no time.
_FIRST_TIMED_CAS: Final = 1_500_000_000_000_000 << CAS_RANDOM_BITS
#: memcached's exptime rule: up to this many seconds is relative, beyond it a unix time.
REALTIME_MAXDELTA: Final = 30 * 24 * 3600


class CasClock:
    """Hands out cas uniques: time-ordered, unique per process, random in the low bits.

    :param clock: unix seconds.
    :param rng: the random low bits (seeded in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._last = 0

    def next(self) -> int:
        value = (int(self._clock() * 1e6) << CAS_RANDOM_BITS) | self._rng.getrandbits(
            CAS_RANDOM_BITS)
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return value


def written_at(cas: int) -> float:
    """When the value with this cas unique was written (unix seconds); 0-ish for a cas an
    object server chose itself (an item written before directord chose them)."""
    return (cas >> CAS_RANDOM_BITS) / 1e6


def flush_cutoff(delay: int, now: float) -> float:
    """The cut-off time of ``flush_all <delay>``: memcached's exptime rule (0 or negative:
    now; up to 30 days: that many seconds from now; beyond: a unix time)."""
    if delay <= 0:
        return now
    if delay <= REALTIME_MAXDELTA:
        return now + delay
    return float(delay)


def is_flushed(cas: int | None, cutoff: float, now: float) -> bool:
    """True when a ``flush_all`` whose cut-off has come hides the value with ``cas``.

    Only cas uniques directord chose tell a time; one a client chose (``E``) or an
    object server chose (an item older than directord's choosing) does not, and such an
    item is not hidden."""
    return (bool(cutoff) and cutoff <= now and cas is not None and cas >= _FIRST_TIMED_CAS
            and written_at(cas) <= cutoff)


class Copy(enum.Enum):
    """What the other replicas get after a write succeeded on the primary."""

    NONE = "none"  # nothing changed
    VALUE = "value"  # the value, flags and exptime the write carried, with its cas
    READ = "read"  # the primary's item as it is now (append, incr: computed there)
    TOUCH = "touch"  # the new exptime (the cas does not change)
    DELETE = "delete"  # gone: delete the copies, forget the item
    DROP = "drop"  # state a copy cannot carry (stale, win token): keep the primary's only


@dataclass(frozen=True, slots=True)
class ItemWrite:
    """A client's write, as the meta command it becomes on the item's primary replica.

    :param verb: ``ms``, ``md``, ``ma`` or ``mg`` (mg with T, N or R writes).
    :param flags: the meta flags to send (``q`` is never sent: the proxy applies it).
    :param value: the data block of an ms.
    :param creates: the write may create a missing item (add, set modes, vivify).
    :param copy: what the other replicas get when it succeeds (:func:`copy_after` may
        narrow it by the reply).
    :param new_cas: the write gives the item a new cas unique (``E``).
    """

    verb: bytes
    flags: p.MetaFlags
    value: bytes | None = None
    creates: bool = False
    copy: Copy = Copy.NONE
    new_cas: bool = True

    def request(self, key: bytes, cas: int | None) -> bytes:
        """The request for the primary, with ``E<cas>`` unless the client gave E."""
        f = self.flags
        explicit = f.explicit_cas
        if explicit is None and self.new_cas and self.verb in (b"ms", b"ma"):
            explicit = cas
        flags = dataclasses.replace(f, quiet=False, explicit_cas=explicit)
        cmd: p.Command
        if self.verb == b"ms":
            cmd = p.MetaSet(key, self.value or b"", flags)
        elif self.verb == b"mg":
            cmd = p.MetaGet(key, flags)
        elif self.verb == b"md":
            cmd = p.MetaDelete(key, flags)
        else:
            cmd = p.MetaArith(key, flags)
        return p.encode_command(cmd)

    def cas_of(self, cas: int) -> int:
        """The cas unique the item gets: the client's E, else ours."""
        e = self.flags.explicit_cas
        return cas if e is None else e


#: Reply codes that say a write took effect.
_DONE: Final = frozenset((b"HD", b"VA"))


def copy_after(write: ItemWrite, code: bytes, flags: tuple[bytes, ...]) -> Copy:
    """What the other replicas need after the primary answered ``code`` (and ``flags``)."""
    if write.verb == b"mg":
        if any(tok[:1] == b"W" for tok in flags):
            return Copy.DROP  # a win token (R) or a vivified placeholder (N): primary only
        return write.copy if code in _DONE else Copy.NONE
    return write.copy if code in _DONE else Copy.NONE


@dataclass(frozen=True, slots=True)
class ItemState:
    """An item as a copy is written: value, client flags, exptime for ``ms T`` (0 =
    never), cas unique."""

    value: bytes
    flags: int
    exptime: int
    cas: int

    def ms_line(self, key: bytes) -> bytes:
        """``ms`` that writes this copy (base64 key: keys from meta commands may hold any
        byte)."""
        return b"ms %s %d b F%d T%d E%d" % (base64.b64encode(key), len(self.value),
                                            self.flags, self.exptime, self.cas)


def ttl_to_exptime(ttl: int) -> int:
    """A remaining time to live as ``me``/``mg t`` report it (-1 = never) as the exptime
    of a copy: a copy about to expire still expires (in one second)."""
    if ttl < 0:
        return 0
    return max(ttl, 1)
