"""runtime.slots: a hand-written __init__ through the slots' setters keeps a frozen
dataclass frozen, comparable and hashable, as the classes built with it rely on."""

from __future__ import annotations

import dataclasses

import pytest

from objstore.items import Outcome, Result, StoreOp
from objstore.protocol import Store
from objstore.record import Record


@pytest.mark.parametrize("make", [
    lambda: Store(b"set", b"k", 1, 2, b"v", noreply=True),
    lambda: StoreOp(b"set", b"k", b"v", 1, 2, compare_cas=3),
    lambda: Record(b"k", b"v", 1, 2, 3, 4),
    lambda: Result(Outcome.STORED, Record(b"k", b"v", 1, 2, 3, 4), number=5),
])
def test_hand_written_init_keeps_the_dataclass_frozen(make: object) -> None:
    a, b = make(), make()  # type: ignore[operator]
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    first = dataclasses.fields(a)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(a, first, None)
    # Every field is set, defaults included (an unset slot raises AttributeError).
    for f in dataclasses.fields(a):
        getattr(a, f.name)
    assert dataclasses.replace(a) == a


def test_defaults_match_the_declared_ones() -> None:
    assert Store(b"set", b"k", 0, 0, b"v") == Store(b"set", b"k", 0, 0, b"v", 0, False)
    op = StoreOp(b"set", b"k", b"v")
    assert (op.flags, op.exptime, op.compare_cas, op.explicit_cas, op.invalidate,
            op.vivify) == (0, 0, None, None, False, None)
    assert Result(Outcome.OK) == Result(Outcome.OK, None, None, b"", (), 0)
    assert Record(b"k", b"", 0, 0, 0, 0).bits == 0
