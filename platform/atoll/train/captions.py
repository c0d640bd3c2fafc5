"""Caption states for a text-conditioned expert's batches, encoded as batches arrive.

Each distinct caption is encoded on its own (a batch of one), so its states do not depend
on which other captions it was encoded with: a resumed run gets bit-identical states. A
bounded LRU cache keeps the recent ones (class-name captions: a handful, all cached).
``None`` (no caption) is the all-False mask: the DiT's null text.
"""
from __future__ import annotations

from collections import OrderedDict

import torch


class CaptionStates:
    def __init__(self, encoder=None, cache: int = 1024):
        if encoder is None:
            from atoll.models.text import TextEncoder

            encoder = TextEncoder()
        self.encoder, self.cache_size = encoder, cache
        self.cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def _one(self, text: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not text:
            L = self.encoder.max_length
            return torch.zeros(L, self.encoder_dim()), torch.zeros(L, dtype=torch.bool)
        if text in self.cache:
            self.cache.move_to_end(text)
            return self.cache[text]
        s, m = self.encoder.encode([text])
        self.cache[text] = (s[0], m[0])
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return s[0], m[0]

    def encoder_dim(self) -> int:
        from atoll.models.text import TEXT_DIM

        return TEXT_DIM

    def states(self, captions: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states [b, L, D], mask [b, L]) of a batch's captions."""
        pairs = [self._one(c) for c in captions]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
