"""Lightning's CSVLogger (``logs/metrics.csv``), written at every logged step and kept across ``resume=true``.

Lightning deletes an existing ``metrics.csv`` when a logger starts in the same folder, so a resumed run would keep
only the rows logged after the kill. Here a resumed run keeps the earlier rows. A row it logs again (the same step
and the same metrics: the "before" evaluation, the steps between the checkpoint and the kill) replaces the earlier
one in place, the last one when several match (method=auto's candidates each count steps from 0), so every step
appears once, in order; new columns are merged into the header.
"""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from calibration_lightning.outputs.files import atomic_write


def _row_key(row: dict) -> tuple[float, frozenset]:
    """A row's step and the metrics it holds (empty cells and ``epoch`` aside)."""
    try:
        step = float(row["step"])
    except (KeyError, TypeError, ValueError):  # a row without a step (or an empty cell)
        step = float("nan")
    return step, frozenset(k for k, v in row.items() if k not in ("step", "epoch") and v not in ("", None))


class ResumableExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep: bool) -> None:
        self._keep = keep
        self._earlier: list[tuple[float, frozenset] | None] = []  # keys of the earlier rows not yet logged again
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not (self._keep and os.path.isfile(self.metrics_file_path)):
            super()._check_log_dir_exists()  # a new run: Lightning's behaviour (the old file is removed)
            return
        with open(self.metrics_file_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            self._earlier = [_row_key(row) for row in reader]
            self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        replaced = {}
        for row in self.metrics if any(self._earlier) else []:
            key = _row_key(row)
            at = next((i for i in reversed(range(len(self._earlier))) if self._earlier[i] == key), None)
            if at is not None:
                replaced[at], self._earlier[at] = row, None
        if replaced:
            self.metrics = [row for row in self.metrics if not any(row is r for r in replaced.values())]
            self._replace_rows(replaced)
        super().save()

    def _replace_rows(self, replaced: dict[int, dict]) -> None:
        with open(self.metrics_file_path, newline="", encoding="utf-8") as f:
            rows: list[dict] = list(csv.DictReader(f))
        for i, row in replaced.items():
            rows[i] = row
        self.metrics_keys = sorted(set(self.metrics_keys).union(*replaced.values()))

        def write(tmp) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.metrics_file_path, write)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` flushed at every logged step (a killed run keeps its rows); with ``resume=True`` the rows
    already in ``metrics.csv`` are kept (see the module docstring)."""

    def __init__(self, save_dir: str, name: str = "logs", version: str = "", resume: bool = False) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, flush_logs_every_n_steps=1)
        self._resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumableExperimentWriter(self.log_dir, keep=self._resume)
        return self._experiment
