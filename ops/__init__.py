"""objmail ops."""
