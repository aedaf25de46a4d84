"""Deterministic, seeded train / val / test splits."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from calibration_lightning.data.records import MCRecord
from calibration_lightning.errors import DataError


@dataclass(frozen=True)
class Splits:
    train: list[MCRecord]
    val: list[MCRecord]
    test: list[MCRecord]


def _count(size: int | float, total: int, name: str) -> int:
    """A split's size: a count, or a fraction of ``total`` rounded down (the epsilon keeps 0.29 * 100 at 29)."""
    if isinstance(size, float) and 0 < size < 1:
        return math.floor(size * total + 1e-9)
    if size < 0 or (isinstance(size, float) and not size.is_integer()):
        raise DataError(f"dataset.split.{name}: must be a count >= 0 or a fraction in (0, 1), got {size}")
    return int(size)


def split_records(
    records: list[MCRecord], train: int | float, val: int | float, test: int | float, seed: int = 0
) -> Splits:
    """Shuffle with ``seed`` and cut into train, val and test (counts, or fractions of all records rounded down).
    Asking too many: a DataError names the splits given as counts (fractions overflow only if they sum over 1)."""
    n = len(records)
    given = {"train": train, "val": val, "test": test}
    sizes = [_count(s, n, name) for name, s in given.items()]
    if sum(sizes) > n:
        counts = [f"dataset.split.{k}" for k, s in given.items() if s and not (isinstance(s, float) and 0 < s < 1)]
        fix = f"lower {' or '.join(counts)}" if counts else "make the fractions add up to at most 1"
        raise DataError(
            f"dataset.split asks for {sizes[0]} + {sizes[1]} + {sizes[2]} = {sum(sizes)} records, "
            f"but the source has only {n}; {fix}"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    picked = [records[i] for i in order]
    a, b = sizes[0], sizes[0] + sizes[1]
    return Splits(train=picked[:a], val=picked[a:b], test=picked[b : b + sizes[2]])
