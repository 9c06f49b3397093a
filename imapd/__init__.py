"""objmail imapd."""
