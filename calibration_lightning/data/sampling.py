"""Batch samplers that group prompts of similar length, so left padding wastes little compute."""

from __future__ import annotations

import random
from typing import Iterator, Sequence


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches: indices sorted by length (longest first), cut into batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class LengthGroupedBatchSampler:
    """Shuffled training batches of similar-length prompts, resumable mid-epoch.

    Each epoch shuffles with ``seed + epoch``, sorts windows of ``batch_size * group`` samples
    by length, cuts them into batches and shuffles the batch order. With several processes,
    rank r takes batches r, r + world, ... (the list is padded so every rank gets as many).

    ``state_dict`` / ``load_state_dict`` record the epoch and how many batches were served,
    so a resumed run skips exactly the batches it already trained on.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group: int = 16,
                 rank: int = 0, world_size: int = 1) -> None:
        self.lengths, self.batch_size, self.seed, self.group = list(lengths), batch_size, seed, group
        self.rank, self.world_size = rank, world_size
        self.epoch, self._served, self._skip = 0, 0, 0

    def _epoch_batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        rng.shuffle(order)
        window = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        if self.world_size > 1:
            while len(batches) % self.world_size:
                batches.append(batches[len(batches) % self.world_size])
            batches = batches[self.rank::self.world_size]
        return batches

    def __len__(self) -> int:
        return len(self._epoch_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        skip, self._skip = self._skip, 0
        self._served = skip
        for batch in batches[skip:]:
            self._served += 1
            yield batch
        self.epoch += 1
        self._served = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "served": self._served}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._skip = int(state["epoch"]), int(state["served"])
