"""objmail director."""
