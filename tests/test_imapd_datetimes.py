"""Tests for imapd.datetimes: IMAP date and date-time syntax."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapd.datetimes import (
    MAX_YEAR,
    MIN_YEAR,
    DateError,
    format_date,
    format_datetime,
    parse_date,
    parse_datetime,
)


def _zone(hours: int, minutes: int = 0) -> dt.timezone:
    return dt.timezone(dt.timedelta(hours=hours, minutes=minutes))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("17-Jul-1996 02:44:25 -0700", dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=_zone(-7))),
        (" 7-Jul-1996 02:44:25 +0000", dt.datetime(1996, 7, 7, 2, 44, 25, tzinfo=_zone(0))),
        ("07-jul-1996 23:59:59 +0530", dt.datetime(1996, 7, 7, 23, 59, 59, tzinfo=_zone(5, 30))),
        ("7-JUL-2024 00:00:00 -0230", dt.datetime(2024, 7, 7, 0, 0, 0, tzinfo=_zone(-2, -30))),
    ],
)
def test_parse_datetime(text, expected):
    """A date-time parses to an aware datetime with the zone it names (day may be ' 7' or '7')."""
    parsed = parse_datetime(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()
    assert parse_datetime(text.encode("ascii")) == expected


@pytest.mark.parametrize(
    "text",
    [
        "32-Jan-2000 00:00:00 +0000",
        "17-Foo-1996 02:44:25 -0700",
        "17-Jul-1996 02:44:25 +0760",
        "17-Jul-1996 02:44:25",
        "17-Jul-96 02:44:25 +0000",
        "17-Jul-1996 24:00:00 +0000",
        "29-Feb-2001 00:00:00 +0000",
        "17-Jul-1996  02:44:25 +0000",
        "",
    ],
)
def test_invalid_datetimes(text):
    """Malformed or impossible date-times raise DateError."""
    with pytest.raises(DateError):
        parse_datetime(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1-Feb-1994", dt.date(1994, 2, 1)),
        ("01-feb-1994", dt.date(1994, 2, 1)),
        ("29-Feb-2000", dt.date(2000, 2, 29)),
    ],
)
def test_parse_date(text, expected):
    """A SEARCH date parses with one or two day digits and any month case."""
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    "text", ["1-Feb-94", "29-Feb-2001", "1 Feb 1994", "001-Feb-1994", "1-Febr-1994"]
)
def test_invalid_dates(text):
    """Malformed or impossible dates raise DateError."""
    with pytest.raises(DateError):
        parse_date(text)


def test_format_datetime_keeps_the_zone():
    """INTERNALDATE is rendered with two-digit day and the value's own UTC offset."""
    value = dt.datetime(1996, 7, 7, 2, 4, 5, tzinfo=_zone(-7))
    assert format_datetime(value) == "07-Jul-1996 02:04:05 -0700"
    assert format_date(dt.date(1994, 2, 1)) == "01-Feb-1994"


def test_format_datetime_refuses_naive_values():
    """A naive datetime is a caller bug: the zone is part of INTERNALDATE."""
    with pytest.raises(ValueError):
        format_datetime(dt.datetime(2020, 1, 1))


@given(
    # Storable dates only (years 2..9998 in UTC and in their own zone): APPEND refuses others.
    st.datetimes(min_value=dt.datetime(MIN_YEAR, 1, 2), max_value=dt.datetime(MAX_YEAR, 12, 30)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_format_parse_round_trip(value, offset_minutes):
    """format_datetime then parse_datetime gives the same instant and offset (to the second)."""
    aware = value.replace(microsecond=0, tzinfo=dt.timezone(dt.timedelta(minutes=offset_minutes)))
    parsed = parse_datetime(format_datetime(aware))
    assert parsed == aware and parsed.utcoffset() == aware.utcoffset()
