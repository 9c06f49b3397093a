"""IMAP ``date`` and ``date-time`` (RFC 3501 section 9): SEARCH dates, APPEND and INTERNALDATE.

``date-time`` is ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` (the day may be a space and one digit);
``date`` is ``d-Mon-yyyy`` or ``dd-Mon-yyyy``. Month names are case-insensitive. Parsed
date-times are timezone-aware; formatting refuses naive ones because the zone is part of the
value IMAP reports.
"""

from __future__ import annotations

import datetime as dt
import re

from imapd.errors import ImapdError
from runtime import errors as kinds

__all__ = ["DateError", "format_date", "format_datetime", "parse_date", "parse_datetime"]

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name.upper(): index + 1 for index, name in enumerate(MONTHS)}

_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_DATE_TIME = re.compile(
    rb"( [0-9]|[0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z"
)


#: The years an APPEND date-time may have, in its own zone and in UTC: what the store and
#: every later rendering of INTERNALDATE can hold.  Python's range is 1..9999, and the
#: PostgreSQL driver turns its two extremes into -infinity/infinity (read back naive), so
#: the first and last year are left out.
MIN_YEAR = 2
MAX_YEAR = 9998


class DateError(ImapdError, kinds.InvalidInput):
    """A date or date-time is not in IMAP syntax or does not exist."""


def _as_bytes(text: bytes | str) -> bytes:
    return text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)


def _month(name: bytes) -> int:
    try:
        return _MONTH_NUMBER[name.decode("ascii").upper()]
    except KeyError:
        raise DateError(f"unknown month {name.decode('ascii', 'replace')!r}") from None


def parse_date(text: bytes | str) -> dt.date:
    """Parse a SEARCH ``date`` such as ``1-Feb-1994`` (without the optional quotes)."""
    match = _DATE.match(_as_bytes(text))
    if match is None:
        raise DateError("expected a date like 1-Feb-1994")
    day, month, year = match.groups()
    try:
        return dt.date(int(year), _month(month), int(day))
    except ValueError as exc:
        raise DateError(f"no such date: {exc}") from None


def parse_datetime(text: bytes | str) -> dt.datetime:
    """Parse a ``date-time`` such as ``17-Jul-1996 02:44:25 -0700`` (without the quotes)."""
    match = _DATE_TIME.match(_as_bytes(text))
    if match is None:
        raise DateError('expected a date-time like "17-Jul-1996 02:44:25 -0700"')
    day, month, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    if int(zone_m) >= 60:
        raise DateError("zone minutes must be below 60")
    offset = dt.timedelta(hours=int(zone_h), minutes=int(zone_m))
    try:
        zone = dt.timezone(-offset if sign == b"-" else offset)
        value = dt.datetime(
            int(year),
            _month(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=zone,
        )
    except ValueError as exc:
        raise DateError(f"no such date-time: {exc}") from None
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or not (MIN_YEAR <= utc.year <= MAX_YEAR and MIN_YEAR <= value.year <= MAX_YEAR):
        raise DateError(f"date-time out of range (years {MIN_YEAR} to {MAX_YEAR})")
    return value


def format_datetime(value: dt.datetime) -> str:
    """Render ``value`` as an IMAP ``date-time`` (without quotes), keeping its zone.

    :raises ValueError: for a naive datetime (a bug in the caller: the zone is not optional).
    """
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("INTERNALDATE needs a timezone-aware datetime")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f"{value.day:02d}-{MONTHS[value.month - 1]}-{value.year:04d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


def format_date(value: dt.date) -> str:
    """Render ``value`` as an IMAP ``date`` such as ``01-Feb-1994``."""
    return f"{value.day:02d}-{MONTHS[value.month - 1]}-{value.year:04d}"
