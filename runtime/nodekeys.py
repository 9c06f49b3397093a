"""The Redis keys object servers write their load reports to and directors read.

These two functions are the one definition of the report keys, shared by the writer
(``objstore.reporter``) and the reader (``director.keys.Keyspace``); see
docs/redis-schema.md, "Load reports (written by objstored)".  The hash tag
``{<node_id>}`` keeps one node's keys in one slot, so one MULTI/EXEC replaces both.
"""

from __future__ import annotations

from typing import Final

#: The installation's key prefix unless ``cluster.redis_prefix`` says otherwise.
DEFAULT_PREFIX: Final = "objmail:"


def report_key(node_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The hash holding a node's last load report."""
    return f"{prefix}node:{{{node_id}}}:report"


def hot_key(node_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The sorted set of a node's hottest keys (score: reads per second)."""
    return f"{prefix}node:{{{node_id}}}:hot"
