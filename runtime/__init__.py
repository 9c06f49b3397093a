"""What every objmail daemon shares.

This is the bottom layer: it imports none of objstore, director, metadata, imapd or ops.
"""
