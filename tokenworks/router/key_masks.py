"""Which workers hold a key: the prefix index's tables, key -> mask of workers (a bit each).

This is the Python table, on a dict; the compiled one (_blocks.c, `KeyMasks`) has the same
methods on one flat array of 64-bit keys and masks, where a lookup in a table of a million
keys is one cache miss instead of a dict's three or four. The index uses the compiled one
while its workers fit 64 bits and this one otherwise (or where the module cannot be built).
A key whose mask empties leaves the table, so the table holds only keys someone holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat


class KeyMasks:
    __slots__ = ("_masks",)

    def __init__(self, items: Iterable[tuple[int, int]] = ()) -> None:
        self._masks: dict[int, int] = dict(items)

    def get(self, key: int) -> int:
        """The mask of the workers holding `key` (0: none)."""
        return self._masks.get(key, 0)

    def add(self, keys: Sequence[int], bit: int) -> None:
        """Each key is held by `bit`'s worker too."""
        masks = self._masks
        if not bit:
            return
        if masks.keys().isdisjoint(keys):  # keys nobody holds yet (a new prompt's): stored in C
            masks.update(zip(keys, repeat(bit)))
            return
        for key in keys:
            masks[key] = masks.get(key, 0) | bit

    def discard(self, keys: Sequence[int], bit: int) -> None:
        """Each key is no longer held by `bit`'s worker; a key nobody holds leaves."""
        masks = self._masks
        for key in keys:
            mask = masks.get(key, 0)
            if mask & bit:
                if mask & ~bit:
                    masks[key] = mask & ~bit
                else:
                    del masks[key]

    def holding(self, bit: int) -> list[int]:
        """The keys held by any of `bit`'s workers."""
        return [key for key, mask in self._masks.items() if mask & bit]

    def items(self) -> list[tuple[int, int]]:
        return list(self._masks.items())

    def __len__(self) -> int:
        return len(self._masks)
