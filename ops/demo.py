"""Sample mail for the demo user of the local cluster (``objmail dev demo``).

The messages are generated here, not copied from anywhere, and are the same on
every run: a plain note, a multipart/alternative newsletter, a thread with a
reply, and one quarterly report attached to several messages so that the
deduplication shows in ``objmail stats``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime


def _report_pdf(size: int = 300 * 1024) -> bytes:
    """A deterministic, incompressible stand-in for a PDF report."""
    out = bytearray(b"%PDF-1.4\n% objmail demo report\n")
    seed = b"objmail-demo"
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return bytes(out[:size]) + b"\n%%EOF\n"


def demo_messages(user: str, domain: str = "example.org") -> list[bytes]:
    """Sample messages addressed to ``user``; identical bytes on every call."""
    rng = random.Random(42)
    start = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
    to = f"{user}@{domain}"
    out: list[bytes] = []

    def base(subject: str, sender: str, minutes: int) -> EmailMessage:
        msg = EmailMessage(policy=SMTP)
        msg["From"] = sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = format_datetime(start + dt.timedelta(minutes=minutes))
        msg["Message-ID"] = f"<demo{minutes}.{user}@{domain}>"
        return msg

    welcome = base("Welcome to objmail", "objmail <postmaster@example.org>", 0)
    welcome.set_content(
        "Hello!\n\nThis mailbox is served by objmail: the mailbox server holds no mail,\n"
        "every message is cut into MIME parts stored once by content hash on the object\n"
        "servers, and PostgreSQL knows which parts make up each message.\n\n"
        "Try `objmail stats` to see logical versus physical bytes.\n")
    out.append(welcome.as_bytes())

    news = base("Your weekly digest \N{ROCKET}", "Digest <digest@news.example.com>", 60)
    news.set_content("Top stories this week:\n - objmail stores attachments once\n")
    news.add_alternative("<html><body><h1>Top stories</h1><p>objmail stores attachments "
                         "<b>once</b>.</p></body></html>", subtype="html")
    news.set_boundary("demo-digest-alternative")
    out.append(news.as_bytes())

    first = base("Lunch on Friday?", "Ana Souza <ana@example.com>", 120)
    first.set_content("Shall we try the new place near the station?\n\nAna\n")
    out.append(first.as_bytes())
    reply = base("Re: Lunch on Friday?", "Bj\u00f6rn Berg <bjorn@example.net>", 150)
    reply["In-Reply-To"] = first["Message-ID"]
    reply["References"] = first["Message-ID"]
    reply.set_content("Yes, 12:30 works for me.\n\n> Shall we try the new place near the "
                      "station?\n")
    out.append(reply.as_bytes())

    pdf = _report_pdf()
    for n, sender in enumerate(["finance@example.com", "ceo@example.com",
                                "board@example.com"]):
        msg = base(f"Q3 report ({n + 1} of 3)", sender, 200 + 10 * n)
        msg.set_content(f"Please find the Q3 report attached. Ref {rng.randrange(10**6)}.\n")
        msg.add_attachment(pdf, maintype="application", subtype="pdf",
                           filename="q3-report.pdf")
        msg.set_boundary(f"demo-report-{n}")
        out.append(msg.as_bytes())
    return out
