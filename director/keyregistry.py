"""Which keys the installation has: fingerprints in Redis, checked at every start.

A keyring is a file on each frontend, so two of them can disagree: a host given another
installation's keyring, or a key id that means another secret there.  Reading with the
wrong key would make every good value fail to decrypt, and a scrub or repair would take
that for corruption.  So the installation records, once per key, a fingerprint
(:func:`director.keyring.fingerprint`) in the hash ``<prefix>keyring``: ``id`` for the
id key, ``key:<n>`` for encryption key ``n`` (``key:0``: the legacy
``encryption_key_file``).  :meth:`KeyRegistry.check` runs when a blob client opens:
a key seen for the first time is recorded (``HSETNX``), one recorded with another
fingerprint refuses the start (:class:`~director.keyring.KeyringError`, exit 78).

The record also tells apart, for a value sealed under a key id this process lacks, a
keyring that is behind (the installation has that key: a configuration problem, reads
stop with :class:`~director.errors.KeyUnavailable`) from a forged label (the
installation never had it: the value is corrupt): :meth:`KeyRegistry.known`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from director.keyring import KeyringError
from director.keys import Keyspace
from director.redisconn import ClusterRunner, Command


class KeyRegistry:
    """The installation's key fingerprints (see the module docstring)."""

    def __init__(self, runner: ClusterRunner, keys: Keyspace) -> None:
        self.runner = runner
        self.key = keys.keyring
        self._recorded: dict[str, str] = {}

    async def load(self) -> dict[str, str]:
        """Every recorded fingerprint: ``id`` and ``key:<n>`` -> fingerprint."""
        (reply,) = await self.runner.run("keyring", [Command(self.key, ("HGETALL", self.key))])
        self._recorded = _decoded(reply)
        return dict(self._recorded)

    async def check(self, fingerprints: Mapping[str, str]) -> None:
        """Record the keys seen for the first time; compare the others.

        :raises KeyringError: a key the installation recorded with another fingerprint
            (another installation's keyring, or another secret under a key id).
        """
        if fingerprints:
            await self.runner.run("keyring", [
                Command(self.key, ("HSETNX", self.key, name, fp))
                for name, fp in fingerprints.items()], durable=True)
        recorded = await self.load()
        wrong = sorted(name for name, fp in fingerprints.items() if recorded.get(name) != fp)
        if wrong:
            what = ", ".join("the id key" if n == "id" else f"key id {n[4:]}" for n in wrong)
            raise KeyringError(
                f"this keyring is not the installation's: {what} differ(s) from what the "
                f"installation recorded (is {self.key} in Redis from another installation, "
                "or a key id reused with a new secret?); use the keyring the other "
                "frontends use")

    async def known(self, key_id: int) -> bool:
        """True when the installation has recorded encryption key ``key_id`` (asks Redis
        again for an id not seen yet: another frontend may have added it since)."""
        name = f"key:{key_id}"
        if name not in self._recorded:
            await self.load()
        return name in self._recorded

    def recorded_key_ids(self) -> list[int]:
        """The encryption key ids recorded as of the last :meth:`load`."""
        return sorted(int(n[4:]) for n in self._recorded if n.startswith("key:"))


def _decoded(reply: Any) -> dict[str, str]:
    if not reply:
        return {}
    items = reply.items() if isinstance(reply, dict) else zip(reply[0::2], reply[1::2],
                                                              strict=True)
    return {_text(k): _text(v) for k, v in items}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
