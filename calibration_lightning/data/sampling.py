"""Batch samplers that group prompts of similar length, so left padding wastes little compute."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence


class LengthSortedBatches:
    """Evaluation batches: indices sorted by length (longest first), cut into batches of ``batch_size``, or, when
    ``tokens_per_batch`` > 0, of as many prompts as keep rows x longest prompt within that budget (at least one).

    A batch sampler object (not a bare list): Lightning's prediction loop wraps its batch sampler.
    ``reference_lengths`` (sorted longest first; default ``lengths`` sorted) decide where token-budget batches
    are cut: DDP ranks pass the longest share so their batches line up.
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


def rounds_per_pass(n: int, batch_size: int, world_size: int, round_batches: int) -> int:
    """Equal rounds of about ``round_batches`` batches (per process) in one pass over ``n`` samples: the pass
    has ``ceil(n / batch_size)`` batches, dealt to ``world_size`` processes (``LengthGroupedBatchSampler``),
    and is cut into ``round(per_rank / round_batches)`` rounds (at least one)."""
    per_rank = math.ceil(math.ceil(n / batch_size) / world_size)
    return max(1, round(per_rank / round_batches)) if 0 < round_batches < per_rank else 1


class LengthGroupedBatchSampler:
    """Shuffled training batches of similar-length prompts, resumable mid-epoch.

    Each pass over the data shuffles with ``seed + pass``, sorts windows of ``batch_size * group`` samples by
    length, cuts them into batches and shuffles the batch order. With several processes, rank r takes batches
    r, r + world, ... (the list is padded so every rank gets as many). A Lightning epoch is one pass, or, with
    ``round_batches``, one round: the pass is cut into equal rounds of about ``round_batches`` batches
    (``rounds_per_pass``), so that validation runs after every round (Lightning validates after a fixed number of
    batches, which must be each round's length). The few batches of a pass left over by the cut (fewer than its
    rounds) are left out of that pass; the next pass reshuffles. ``epoch_source`` returns the current (Trainer's)
    epoch, on which alone the order depends; ``round_batches`` 0 or at least a pass's batches makes a round a pass.
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
        round_batches: int = 0,
    ) -> None:
        self.lengths, self.batch_size, self.seed, self.group = list(lengths), batch_size, seed, group
        self.round_batches = round_batches
        self.rank, self.world_size = rank, world_size
        self.epoch_source = epoch_source or (lambda: 0)
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    @property
    def rounds_per_pass(self) -> int:
        """Lightning epochs (rounds) per pass over the data."""
        return rounds_per_pass(len(self.lengths), self.batch_size, self.world_size, self.round_batches)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of Lightning epoch ``epoch``: a pass, or one round of a pass."""
        k = self.rounds_per_pass
        full = self.pass_batches(epoch // k)
        if k == 1:
            return full
        length = len(full) // k
        start = (epoch % k) * length
        return full[start : start + length]

    def pass_batches(self, n: int) -> list[list[int]]:
        """Every batch of pass ``n`` (this process's share)."""
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + n)
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
        return len(self.batches(0))  # a round's: every round of a pass is as long

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
