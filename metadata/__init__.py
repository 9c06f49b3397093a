"""objmail metadata."""
