"""The keys and values of the sequences decoding together, left-padded to one width so that one pass serves all.

Each sequence holds a slot (a row) from when it joins until it leaves. Padding is on the left so that every row's
newest token is in the same column, and a decode step writes that column in place, into room kept on the right: a step
copies nothing that is cached. A sequence that leaves frees its slot, which the next one to join reuses in place (its
keys written right-aligned into the columns in use); a free slot still goes through the pass, masked, until the cache
is compacted, which happens when half the slots are free or half the columns are no longer needed by any row. Only
compaction, a joiner longer than the columns in use, and a joiner finding no free slot copy the cache.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import torch

from bigmodel.runtime.generation.models import Cache, KeyValue

Owner = TypeVar("Owner")
# Columns of room allocated beyond what is cached, so that growing by a token is a write, not a copy.
ROOM = 64


def _fresh(like: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    _, heads, _, width = like.shape
    return like.new_zeros((rows, heads, columns, width))


class BatchCache(Generic[Owner]):
    def __init__(self) -> None:
        # Per layer, keys and values (slots, heads, capacity, head width); columns [0, width) are in use.
        self.layers: Cache = []
        self.width = 0
        # Per slot: who holds it (None when free) and how many tokens it has cached (0 when free); its keys are the
        # last lengths[slot] of the columns in use.
        self.owners: list[Owner | None] = []
        self.lengths: list[int] = []

    @property
    def slots(self) -> int:
        return len(self.owners)

    @property
    def tokens(self) -> int:
        """Cached tokens, padding not counted."""
        return sum(self.lengths)

    def held(self) -> list[tuple[int, Owner]]:
        """The slots held, with their owners, in slot order."""
        return [(slot, owner) for slot, owner in enumerate(self.owners) if owner is not None]

    def add(self, joining: list[tuple[Owner, Cache, int]]) -> None:
        """Sequences with their prefill caches (each a batch of one, exactly its length wide): into free slots in
        place where they fit, else all together in one rebuild."""
        free = [slot for slot, owner in enumerate(self.owners) if owner is None]
        if len(joining) <= len(free) and all(length <= self.width for _, _, length in joining):
            for (owner, cache, length), slot in zip(joining, free, strict=False):
                for (keys, values), (row_keys, row_values) in zip(self.layers, cache, strict=True):
                    keys[slot, :, self.width - length : self.width] = row_keys[0]
                    values[slot, :, self.width - length : self.width] = row_values[0]
                self.owners[slot], self.lengths[slot] = owner, length
            return
        if joining:
            held = self.held()
            width = max([self.width, *(length for _, _, length in joining)])
            self._rebuild([slot for slot, _ in held], width, [cache for _, cache, _ in joining])
            self.owners = [owner for _, owner in held] + [owner for owner, _, _ in joining]
            self.lengths = [self.lengths[slot] for slot, _ in held] + [length for _, _, length in joining]

    def release(self, slots: list[int]) -> None:
        """Frees the slots; compacts when enough of the cache is no longer needed."""
        for slot in slots:
            self.owners[slot], self.lengths[slot] = None, 0
        held = self.held()
        if not held:
            self.layers, self.width, self.owners, self.lengths = [], 0, [], []
            return
        needed = max(self.lengths)
        if 2 * len(held) <= self.slots or self.width - needed > max(ROOM, self.width // 2):
            rows = [slot for slot, _ in held]
            self._rebuild(rows, needed, [])
            self.owners = [owner for _, owner in held]
            self.lengths = [self.lengths[slot] for slot in rows]

    def _rebuild(self, rows: list[int], width: int, joining: list[Cache]) -> None:
        """New buffers: the rows kept (their last width columns in use) and the joiners, right-aligned to width."""
        template = self.layers or joining[0]
        index = torch.tensor(rows, device=template[0][0].device)
        count = len(rows) + len(joining)
        layers: Cache = []
        for layer, (like_keys, like_values) in enumerate(template):
            keys, values = _fresh(like_keys, count, width + ROOM), _fresh(like_values, count, width + ROOM)
            if rows:
                kept = min(width, self.width)
                old_keys, old_values = self.layers[layer]
                keys[: len(rows), :, width - kept : width] = old_keys.index_select(0, index)[
                    :, :, self.width - kept : self.width
                ]
                values[: len(rows), :, width - kept : width] = old_values.index_select(0, index)[
                    :, :, self.width - kept : self.width
                ]
            for offset, cache in enumerate(joining):
                row_keys, row_values = cache[layer]
                length = row_keys.shape[2]
                keys[len(rows) + offset, :, width - length : width] = row_keys[0]
                values[len(rows) + offset, :, width - length : width] = row_values[0]
            layers.append((keys, values))
        self.layers, self.width = layers, width

    def key_mask(self, new: int) -> torch.Tensor:
        """(slots, width + new): which keys of each slot are real once new tokens are appended to every slot (a free
        slot sees only its own new token, so that its discarded row stays finite)."""
        device = self.layers[0][0].device
        lengths = torch.tensor(self.lengths, device=device)
        columns = torch.arange(self.width + new, device=device)
        return columns[None, :] >= (self.width - lengths)[:, None]

    def reserve(self, new: int) -> None:
        """Room for new columns: a copy only when the room is used up, which ROOM makes rare."""
        if self.layers and self.width + new > self.layers[0][0].shape[2]:
            self._rebuild(list(range(self.slots)), self.width, [])

    def extend(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> KeyValue:
        """A layer's new keys and values written after the columns in use (reserve() made room); the keys and values
        to attend over, as views."""
        new = keys.shape[2]
        buffer_keys, buffer_values = self.layers[layer]
        buffer_keys[:, :, self.width : self.width + new] = keys
        buffer_values[:, :, self.width : self.width + new] = values
        return buffer_keys[:, :, : self.width + new], buffer_values[:, :, : self.width + new]

    def in_use(self) -> Cache:
        """The columns in use, as views (for a model that builds its own cache object from them)."""
        return [(k[:, :, : self.width], v[:, :, : self.width]) for k, v in self.layers]

    def replace(self, layers: Cache) -> None:
        """Buffers a model made itself, new columns already appended (commit() then counts them)."""
        self.layers = layers

    def commit(self, new: int) -> None:
        """new tokens of every held slot are now cached."""
        self.width += new
        self.lengths = [
            length + new if owner is not None else 0 for length, owner in zip(self.lengths, self.owners, strict=True)
        ]
