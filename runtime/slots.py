"""Cheap construction of frozen slotted dataclasses on hot paths.

A frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__`` (its own ``__setattr__`` refuses), which costs about three times
what the slot's own setter does, compiled by mypyc or not.  Classes built once per request
(objstored's set command, write op, record and result) write their ``__init__`` by hand
with :func:`slot_setter`, and stay frozen, hashable and comparable as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

__all__ = ["slot_setter"]


def slot_setter(cls: type, name: str) -> Callable[[object, object], None]:
    """The setter of the slot ``name`` of ``cls`` (a ``slots=True`` dataclass, taken after
    the decorator made the class): it writes the field even when the class is frozen."""
    return cast(Callable[[object, object], None], cls.__dict__[name].__set__)
