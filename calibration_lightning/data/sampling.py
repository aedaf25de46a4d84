"""Batch samplers that group prompts of similar length, so left padding wastes little compute."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence


class LengthSortedBatches:
    """Evaluation batches: indices sorted by length (longest first), cut into batches.

    A batch sampler object (not a bare list): Lightning's prediction loop wraps its batch sampler.

    Args:
        lengths: token length of each prompt.
        batch_size: prompts per batch (when ``tokens_per_batch`` is 0).
        tokens_per_batch: when > 0, each batch takes as many prompts as keep rows x longest prompt within
            this budget (at least one): short prompts go in large batches, long ones in small batches.
        reference_lengths: lengths, sorted longest first, that decide where the token-budget batches are
            cut (default: ``lengths`` sorted); DDP ranks pass the longest share so their batches line up.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        tokens_per_batch: int = 0,
        reference_lengths: Sequence[int] | None = None,
    ) -> None:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        if tokens_per_batch <= 0:
            self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            return
        cut = list(reference_lengths) if reference_lengths is not None else [lengths[i] for i in order]
        self.batches, start = [], 0
        while start < len(order):
            size = max(1, tokens_per_batch // max(cut[start], 1))
            self.batches.append(order[start : start + size])
            start += size

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class LengthGroupedBatchSampler:
    """Shuffled training batches of similar-length prompts, resumable mid-epoch.

    Each epoch shuffles with ``seed + epoch``, sorts windows of ``batch_size * group`` samples
    by length, cuts them into batches and shuffles the batch order. With several processes,
    rank r takes batches r, r + world, ... (the list is padded so every rank gets as many).

    Args:
        epoch_source: returns the current epoch (the Trainer's); the order depends only on it.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        group: int = 16,
        rank: int = 0,
        world_size: int = 1,
        epoch_source: Callable[[], int] | None = None,
    ) -> None:
        self.lengths, self.batch_size, self.seed, self.group = list(lengths), batch_size, seed, group
        self.rank, self.world_size = rank, world_size
        self.epoch_source = epoch_source or (lambda: 0)
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def batches(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + epoch)
        rng.shuffle(order)
        window = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        if self.world_size > 1:
            while len(batches) % self.world_size:
                batches.append(batches[len(batches) % self.world_size])
            batches = batches[self.rank :: self.world_size]
        return batches

    def __len__(self) -> int:
        return len(self.batches(0))

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch_source()
        batches = self.batches(epoch)
        if self._resume is not None:
            resume_epoch, done = self._resume
            self._resume = None
            if resume_epoch == epoch:
                batches = batches[done:]
        yield from batches

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches the next time ``epoch`` is iterated."""
        self._resume = (epoch, batches_done)
