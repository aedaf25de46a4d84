"""Lightning's CSVLogger (``logs/metrics.csv``), written at every logged step and kept across ``resume=true``.

Lightning deletes an existing ``metrics.csv`` when a logger starts in the same folder; here a resumed run keeps the
earlier rows. A row logged again (the same step and metrics) replaces the last earlier one that matches, in place
(method=auto's candidates each count steps from 0), so every step appears once, in order.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shlex

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from calibration_lightning.errors import UserError
from calibration_lightning.outputs.files import atomic_write

log = logging.getLogger(__name__)


def _row_key(row: dict) -> tuple[float, frozenset]:
    """A row's step and the metrics it holds (empty cells and ``epoch`` aside)."""
    try:
        step = float(row["step"])
    except (KeyError, TypeError, ValueError):  # a row without a step (or an empty cell)
        step = float("nan")
    return step, frozenset(k for k, v in row.items() if k not in ("step", "epoch") and v not in ("", None))


def read_metrics_log(path: str | os.PathLike) -> tuple[list[str], list[dict], bool]:
    """The header and rows of the ``metrics.csv`` a resumed run keeps, and whether its last line was cut short.

    A last line without its newline was being written when the run was killed: it is left out (the resumed run
    logs that step again). Anything else that is not a CSV file as this logger writes it raises ``UserError``.
    """
    q = shlex.quote(str(path))
    fix = f"move it aside (mv {q} {q}.damaged) and rerun with resume=true: a new log starts, the old rows stay there"
    if os.path.isdir(path):
        raise UserError(f"{path}: a folder where the metrics log should be; {fix}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); make it readable, or {fix}") from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}: line {line}: not UTF-8 text (byte {e.start}); {fix}") from None
    cut = bool(text) and not text.endswith("\n")
    reader = csv.reader(io.StringIO(text[: text.rfind("\n") + 1] if cut else text, newline=""), strict=True)
    header, rows = None, []
    try:
        for cells in reader:
            if not cells:
                continue  # a blank line: csv.DictReader skips it too
            if header is None:
                header = cells
            elif len(cells) != len(header):
                raise UserError(
                    f"{path}: line {reader.line_num}: {len(cells)} cells under a header of {len(header)}; {fix}"
                )
            else:
                rows.append(dict(zip(header, cells)))
    except csv.Error as e:
        raise UserError(f"{path}: line {reader.line_num}: not valid CSV ({e}); {fix}") from None
    return header or [], rows, cut


class ResumableExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep: bool) -> None:
        self._keep = keep
        self._earlier: list[tuple[float, frozenset] | None] = []  # keys of the earlier rows not yet logged again
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not (self._keep and os.path.lexists(self.metrics_file_path)):
            super()._check_log_dir_exists()  # a new run: Lightning's behaviour (the old file is removed)
            return
        header, rows, cut = read_metrics_log(self.metrics_file_path)
        if cut:
            log.warning("%s: its last line was cut short by the interruption: left out", self.metrics_file_path)
            self._write(header, rows)
        self._earlier = [_row_key(row) for row in rows]
        self.metrics_keys = sorted(header)

    def save(self) -> None:
        replaced = {}
        for row in self.metrics if any(self._earlier) else []:
            key = _row_key(row)
            at = next((i for i in reversed(range(len(self._earlier))) if self._earlier[i] == key), None)
            if at is not None:
                replaced[at], self._earlier[at] = row, None
        if replaced:
            self.metrics = [row for row in self.metrics if not any(row is r for r in replaced.values())]
            with open(self.metrics_file_path, newline="", encoding="utf-8") as f:
                rows: list[dict] = list(csv.DictReader(f))
            for i, row in replaced.items():
                rows[i] = row
            self.metrics_keys = sorted(set(self.metrics_keys).union(*replaced.values()))
            self._write(self.metrics_keys, rows)
        super().save()

    def _write(self, header: list[str], rows: list[dict]) -> None:
        def write(tmp) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=header)
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
