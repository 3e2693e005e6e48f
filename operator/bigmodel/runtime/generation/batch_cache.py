"""The keys and values of the sequences decoding together, left-padded to one length so that one pass serves all.

Rows join (after their prefill) and leave (done or cancelled) between steps. Padding is on the left so that every
row's newest token is in the last column and one new column a step serves them all; columns no row needs any more
are cut off when a long row leaves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bigmodel.runtime.generation.models import Cache


def _left_padded(cache: Cache, length: int) -> Cache:
    """Each layer's keys and values with zero columns before them, up to length columns."""
    return [tuple(F.pad(part, (0, 0, length - part.shape[2], 0)) for part in layer) for layer in cache]  # type: ignore[misc]


class BatchCache:
    def __init__(self) -> None:
        self.layers: Cache | None = None
        # Tokens cached for each row; the row's keys are the last lengths[row] columns.
        self.lengths: list[int] = []

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return 0 if self.layers is None else self.layers[0][0].shape[2]

    @property
    def tokens(self) -> int:
        """Cached tokens, padding not counted."""
        return sum(self.lengths)

    def add(self, row: Cache, length: int) -> None:
        """A sequence's prefill cache (batch of one) as the last row."""
        if self.layers is None:
            self.layers, self.lengths = row, [length]
            return
        width = max(self.width, length)
        mine, theirs = _left_padded(self.layers, width), _left_padded(row, width)
        self.layers = [
            (torch.cat([keys, row_keys]), torch.cat([values, row_values]))
            for (keys, values), (row_keys, row_values) in zip(mine, theirs, strict=True)
        ]
        self.lengths.append(length)

    def keep(self, rows: list[int]) -> None:
        """Only these rows, in this order; the columns none of them uses are dropped."""
        if not rows:
            self.layers, self.lengths = None, []
            return
        assert self.layers is not None
        self.lengths = [self.lengths[row] for row in rows]
        first = self.width - max(self.lengths)
        index = torch.tensor(rows, device=self.layers[0][0].device)
        self.layers = [
            (keys.index_select(0, index)[:, :, first:], values.index_select(0, index)[:, :, first:])
            for keys, values in self.layers
        ]

    def key_mask(self, new: int) -> torch.Tensor:
        """(rows, width + new): which keys of each row are real once new tokens are appended to every row."""
        assert self.layers is not None
        device = self.layers[0][0].device
        lengths = torch.tensor(self.lengths, device=device)
        columns = torch.arange(self.width + new, device=device)
        return columns[None, :] >= (self.width - lengths)[:, None]

    def replace(self, layers: Cache, new: int) -> None:
        """The cache a decode pass returned, new tokens longer in every row."""
        self.layers = layers
        self.lengths = [length + new for length in self.lengths]
