"""Deterministic, seeded train / val / test splits."""

from __future__ import annotations

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
    if isinstance(size, float) and 0 < size < 1:
        return int(round(size * total))
    if size < 0 or (isinstance(size, float) and not size.is_integer()):
        raise DataError(f"dataset.split.{name}: must be a count >= 0 or a fraction in (0, 1), got {size}")
    return int(size)


def split_records(
    records: list[MCRecord], train: int | float, val: int | float, test: int | float, seed: int = 0
) -> Splits:
    """Shuffle with ``seed`` and cut into train, val and test (counts or fractions of all records)."""
    n = len(records)
    sizes = [_count(s, n, name) for s, name in ((train, "train"), (val, "val"), (test, "test"))]
    if sum(sizes) > n:
        raise DataError(
            f"dataset.split asks for {sizes[0]} + {sizes[1]} + {sizes[2]} = {sum(sizes)} records, "
            f"but the source has only {n}; lower the split sizes"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    picked = [records[i] for i in order]
    a, b = sizes[0], sizes[0] + sizes[1]
    return Splits(train=picked[:a], val=picked[a:b], test=picked[b : b + sizes[2]])
