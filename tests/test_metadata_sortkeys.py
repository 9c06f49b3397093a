"""SORT and THREAD keys computed at delivery (RFC 5256 base subject, RFC 5957 display)."""

from __future__ import annotations

import pytest

from metadata.sortkeys import base_subject, sort_keys


@pytest.mark.parametrize(("subject", "base", "reply"), [
    ("Hello", "Hello", False),
    ("Re: Hello", "Hello", True),
    ("RE:  re : Hello", "Hello", True),
    ("Fwd: Hello", "Hello", True),
    ("fw: Hello", "Hello", True),
    ("Hello (fwd)", "Hello", True),
    ("Hello (fwd) (FWD)  ", "Hello", True),
    ("[list] Re: Hello", "Hello", True),
    ("Re: [list] Hello", "Hello", True),
    ("Re[2]: Hello", "Hello", True),
    ("[Fwd: Re: Hello]", "Hello", True),
    ("[fwd: [list] Hello (fwd)]", "Hello", True),
    ("[list]", "[list]", False),
    ("Re: [list]", "[list]", True),
    ("[a] [b] Hello", "Hello", False),
    ("Hello\tworld  again", "Hello world again", False),
    ("", "", False),
    ("Reply to all", "Reply to all", False),
])
def test_base_subject_follows_rfc_5256(subject: str, base: str, reply: bool) -> None:
    """Leaders (Re:, Fw:, Fwd:, with blobs), trailers ((fwd)), [fwd: ...] wrappers and
    leading blobs go as RFC 5256 2.1 says, whitespace collapses, and a reply is noted."""
    assert base_subject(subject) == (base, reply)


def test_sort_keys_from_a_header_block() -> None:
    """Keys come decoded and casefolded: base subject, first address's mailbox and display
    name (mailbox@host without one), Message-ID, and References over In-Reply-To."""
    keys = sort_keys(
        b"From: =?utf-8?q?=C3=89lodie?= <Elodie@Example.org>, bob@example.org\r\n"
        b"To: Carol@Example.NET\r\nCc: (nobody) dave@example.com\r\n"
        b"Subject: Re: =?utf-8?q?R=C3=A9UNION?=\r\nMessage-ID: <own@x>\r\n"
        b"In-Reply-To: <parent@x>\r\nReferences: <root@x>\r\n <parent@x>\r\n\r\n")
    assert (keys.subject, keys.reply) == ("réunion", True)
    assert (keys.from_, keys.display_from) == ("elodie", "élodie")
    assert (keys.to, keys.display_to) == ("carol", "carol@example.net")
    assert keys.cc == "dave"
    assert keys.message_id == "own@x"
    assert keys.references == ("root@x", "parent@x")
    only_reply = sort_keys(b"In-Reply-To: <a@x> <b@x>\r\nSubject: x\r\n\r\n")
    assert only_reply.references == ("a@x",) and only_reply.message_id == ""
