"""The keys and values of the sequences decoding together, left-padded to one width so that one pass serves all.

Rows join (after their prefill) and leave (done or cancelled) between steps, each a copy of the cache; a decode step
writes its one new column in place, into room kept at the right, so a step costs no copy of what is cached. Padding is
on the left so that every row's newest token is in the same column; columns no row needs any more are cut off when a
long row leaves.
"""

from __future__ import annotations

import torch

from bigmodel.runtime.generation.models import Cache, KeyValue

# Columns of room allocated beyond what is cached, so that growing by a token is a write, not a copy.
ROOM = 64


def _fresh(like: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    batch, heads, _, width = like.shape
    return like.new_zeros((rows, heads, columns, width))


class BatchCache:
    def __init__(self) -> None:
        # Per layer, keys and values (rows, heads, capacity, head width); columns [0, width) are in use.
        self.layers: Cache = []
        self.width = 0
        # Tokens cached for each row; its keys are the last lengths[row] of the columns in use.
        self.lengths: list[int] = []

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        """Cached tokens, padding not counted."""
        return sum(self.lengths)

    def _rebuilt(self, parts: list[tuple[Cache, int, int]], width: int) -> None:
        """The buffers remade from parts: (cache, its first column in use, rows), each right-aligned to width."""
        rows = sum(count for _, _, count in parts)
        template = parts[0][0]
        layers: Cache = []
        for index in range(len(template)):
            keys = _fresh(template[index][0], rows, width + ROOM)
            values = _fresh(template[index][1], rows, width + ROOM)
            row = 0
            for cache, first, count in parts:
                part_keys, part_values = cache[index]
                used = part_keys.shape[2] - first
                keys[row : row + count, :, width - used : width] = part_keys[:, :, first:]
                values[row : row + count, :, width - used : width] = part_values[:, :, first:]
                row += count
            layers.append((keys, values))
        self.layers, self.width = layers, width

    def add(self, joining: list[tuple[Cache, int]]) -> None:
        """Prefill caches (each a batch of one, exactly its length wide) as the last rows, in one copy."""
        if not joining:
            return
        width = max(self.width, *(length for _, length in joining))
        mine = [([(k[:, :, : self.width], v[:, :, : self.width]) for k, v in self.layers], 0, self.rows)]
        parts = (mine if self.rows else []) + [(cache, 0, 1) for cache, _ in joining]
        self._rebuilt(parts, width)
        self.lengths += [length for _, length in joining]

    def keep(self, rows: list[int]) -> None:
        """Only these rows, in this order; the columns none of them uses are dropped."""
        if not rows:
            self.layers, self.width, self.lengths = [], 0, []
            return
        lengths = [self.lengths[row] for row in rows]
        first = self.width - max(lengths)
        index = torch.tensor(rows, device=self.layers[0][0].device)
        selected = [
            (k.index_select(0, index)[:, :, : self.width], v.index_select(0, index)[:, :, : self.width])
            for k, v in self.layers
        ]
        self._rebuilt([(selected, first, len(rows))], self.width - first)
        self.lengths = lengths

    def key_mask(self, new: int) -> torch.Tensor:
        """(rows, width + new): which keys of each row are real once new tokens are appended to every row."""
        device = self.layers[0][0].device
        lengths = torch.tensor(self.lengths, device=device)
        columns = torch.arange(self.width + new, device=device)
        return columns[None, :] >= (self.width - lengths)[:, None]

    def reserve(self, new: int) -> None:
        """Room for new columns: a copy only when the room is used up, which ROOM makes rare."""
        if self.layers and self.width + new > self.layers[0][0].shape[2]:
            current = [(k[:, :, : self.width], v[:, :, : self.width]) for k, v in self.layers]
            self._rebuilt([(current, 0, self.rows)], self.width)

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
        """new tokens of every row are now cached."""
        self.width += new
        self.lengths = [length + new for length in self.lengths]
