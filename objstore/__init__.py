"""objmail objstore."""
