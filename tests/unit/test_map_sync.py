"""maps.sync_map, the one way a policy map changes: against a fake BPF hash map of fixed capacity that
refuses a new key when full (E2BIG, as the kernel's htab does) and records every operation."""

import errno
import os
import random

import pytest

from mptcpize_py import abi
from mptcpize_py.program.maps import sync_map


class FullMap(OSError):
    def __init__(self):
        super().__init__(errno.E2BIG, os.strerror(errno.E2BIG))


class FakeHashMap:
    """A BPF_HASH: updating a key it holds always works, a new key fails with E2BIG once `capacity`
    keys are held. `ops` records ("set" | "del", key) in order; `seen` the keys held after each one."""

    def __init__(self, capacity: int, initial: dict[bytes, int]):
        assert len(initial) <= capacity
        self.capacity = capacity
        self.data = dict(initial)
        self.ops: list[tuple[str, bytes]] = []
        self.seen: list[frozenset[bytes]] = [frozenset(self.data)]

    def keys(self):
        return iter(list(self.data))

    def __setitem__(self, key: bytes, leaf: int) -> None:
        if key not in self.data and len(self.data) >= self.capacity:
            raise FullMap()
        self.data[key] = leaf
        self._record("set", key)

    def __delitem__(self, key: bytes) -> None:
        del self.data[key]
        self._record("del", key)

    def _record(self, op: str, key: bytes) -> None:
        self.ops.append((op, key))
        self.seen.append(frozenset(self.data))


def key(i: int) -> bytes:
    return i.to_bytes(8, "little")


def sync_and_check(table: FakeHashMap, new: dict[bytes, int]) -> None:
    """Syncs to `new` and checks what the kernel side could have seen at every step."""
    kept = set(table.data) & set(new)
    sync_map(table, new.items())
    assert table.data == new
    assert max(len(s) for s in table.seen) <= table.capacity
    for step, held in enumerate(table.seen):
        missing = kept - held
        assert not missing, f"after operation {step} ({table.ops[step - 1]}) {len(missing)} kept keys absent"
    assert not [k for op, k in table.ops if op == "del" and k in kept]   # updated in place, never removed


def test_full_replacement_at_capacity():
    """A package upgrade renames over every selected executable: every key changes at once."""
    cap = abi.MAX_EXE_RULES
    table = FakeHashMap(cap, {key(i): 1 for i in range(cap)})
    sync_and_check(table, {key(cap + i): 2 for i in range(cap)})


def test_kept_keys_are_never_absent_and_updated_in_place():
    cap = 64
    old = {key(i): 1 for i in range(cap)}                        # 0..63
    new = {key(i): 2 for i in range(cap // 2, cap + cap // 2)}   # 32..95: half kept, action changed
    table = FakeHashMap(cap, old)
    sync_and_check(table, new)
    assert {table.data[key(i)] for i in range(cap // 2, cap)} == {2}


def test_any_previous_state_to_any_fitting_selection():
    """Random old and new contents of a full-or-not map, including a map left half-synced."""
    rng = random.Random(12)
    cap = 32
    for _ in range(300):
        universe = rng.sample(range(4 * cap), 3 * cap)
        old = {key(i): rng.choice((1, 2)) for i in universe[:rng.randint(0, cap)]}
        new = {key(i): rng.choice((1, 2))
               for i in rng.sample(universe, rng.randint(0, cap))}
        sync_and_check(FakeHashMap(cap, old), new)


def test_ctypes_like_keys_compare_by_their_bytes():
    """bcc hands out fresh ctypes objects from keys(): equal keys are not the same object."""
    class Key:
        def __init__(self, i):
            self.b = key(i)

        def __bytes__(self):
            return self.b

    class Table(FakeHashMap):
        def keys(self):
            return iter([Key(int.from_bytes(k, "little")) for k in self.data])

        def __setitem__(self, k, leaf):
            super().__setitem__(bytes(k), leaf)

        def __delitem__(self, k):
            super().__delitem__(bytes(k))

    table = Table(4, {key(1): 1, key(2): 1, key(3): 1, key(4): 1})
    sync_map(table, [(Key(3), 2), (Key(4), 2), (Key(5), 2), (Key(6), 2)])
    assert table.data == {key(3): 2, key(4): 2, key(5): 2, key(6): 2}
    assert ("del", key(3)) not in table.ops


@pytest.mark.parametrize("n", [0, 1])
def test_empty_selection_empties_the_map(n):
    table = FakeHashMap(4, {key(i): 1 for i in range(4)})
    sync_and_check(table, {key(9): 1} if n else {})
