"""What every objmail daemon shares: config loading, the event loop, the direct socket
write, and the key names object servers and directors agree on.

This is the bottom layer: it imports none of objstore, director, metadata, imapd or ops
(enforced by import-linter, see setup.cfg).
"""
