"""The Redis keys both object servers and directors use.

:func:`report_key` and :func:`hot_key` are the one definition of the report keys, shared
by the writer (``objstore.reporter``) and the reader (``director.keys.Keyspace``); see
docs/redis-schema.md, "Load reports (written by objstored)".  The hash tag
``{<node_id>}`` keeps one node's keys in one slot, so one MULTI/EXEC replaces both.

:func:`registry_key` names a node's record in the directors' registry
(``director.registry``), whose ``number`` field objstored reads with each report and
keeps in its data directory, so the number survives the loss of the registry.
"""

from __future__ import annotations

from typing import Final

#: The installation's key prefix unless ``cluster.redis_prefix`` says otherwise.
DEFAULT_PREFIX: Final = "objmail:"


#: Hash tag shared by the registry keys, so one Lua script can update them together.
REGISTRY_TAG: Final = "{reg}"


def registry_key(node_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The hash of a node's registry record (address, zone, tier, weight, state, number)."""
    return f"{prefix}{REGISTRY_TAG}:node:{node_id}"


def report_key(node_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The hash holding a node's last load report."""
    return f"{prefix}node:{{{node_id}}}:report"


def hot_key(node_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The sorted set of a node's hottest keys (score: reads per second)."""
    return f"{prefix}node:{{{node_id}}}:hot"
