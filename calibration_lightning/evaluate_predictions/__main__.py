"""``python -m calibration_lightning.evaluate_predictions FILE [FILE ...] [--before FILE] --out DIR``.

Scores each prediction file (``readers.py``: ours or lm-eval ``--log_samples``) as a run scores a phase: every
metric with its interval, and the paired change from ``--before`` (the same questions, matched by id). Writes
``DIR/<file stem>.json`` per file (atomically) and prints one table. A bad file or option: one ``error:`` line
on stderr and exit 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from calibration_lightning.calibration.bootstrap import INTERVALS
from calibration_lightning.errors import DataError, UserError
from calibration_lightning.evaluate_predictions import evaluate_predictions
from calibration_lightning.evaluate_predictions.readers import Predictions, read_predictions
from calibration_lightning.outputs.files import write_json
from calibration_lightning.outputs.summary import LABELS, with_interval

SHOWN = {**LABELS, "conf_ece_debiased": "conf-ECE debiased (l2)", "cw_ece_debiased": "cw-ECE debiased (l2)"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as every user error of the project
        raise UserError(message)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m calibration_lightning.evaluate_predictions", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="prediction files (.jsonl)")
    parser.add_argument("--before", type=Path, help="predictions of the same questions before a change")
    parser.add_argument("--out", type=Path, required=True, help="folder for one JSON per file")
    parser.add_argument("--n-bins", type=int, default=10)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n_bins < 1:
        raise UserError(f"--n-bins={args.n_bins}: must be >= 1")
    if args.resamples < 0:
        raise UserError(f"--resamples={args.resamples}: must be >= 0 (0 turns intervals off)")
    if not 0 < args.level < 1:
        raise UserError(f"--level={args.level}: must be in (0, 1), e.g. 0.95")
    stems = [f.stem for f in args.files]
    if len(set(stems)) != len(stems):
        raise UserError(f"two files share a name ({stems}): each writes DIR/<name>.json")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: not a folder")
    return args


def _paired(before: Predictions, file: Path, after: Predictions):
    """``before``'s probabilities in ``after``'s question order (matched by id)."""
    if sorted(before.ids) != sorted(after.ids):
        raise DataError(f"{file}: its question ids differ from those of --before {len(after.ids)} vs {len(before.ids)}")
    if before.probs.shape[1] != after.probs.shape[1]:
        raise DataError(f"{file}: {after.probs.shape[1]} options, --before has {before.probs.shape[1]}")
    row = {q: i for i, q in enumerate(before.ids)}
    order = [row[q] for q in after.ids]
    if not bool((before.labels[order] == after.labels).all()):
        raise DataError(f"{file}: gold answers differ from those of --before")
    return before.probs[order]


def _table(columns: dict[str, dict]) -> str:
    """One row per metric, one column per file: the value and its interval."""
    names = list(columns)
    rows = [("", *names)]
    for m, label in SHOWN.items():
        key = m.removesuffix("_debiased")  # a debiased estimate's interval is its ECE's (both for the l2 value)
        cells = [with_interval(c[m], (c.get("ci95") or {}).get(key)) if m in c else "-" for c in columns.values()]
        rows.append((label, *cells))
    rows.append(("n", *(str(c["n"]) for c in columns.values())))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def main(argv: list[str] | None = None) -> int:
    try:
        args = _arguments(argv)
        files = {f: read_predictions(f) for f in args.files}  # every file checked before anything is written
        before = read_predictions(args.before) if args.before else None
        pairs = {f: _paired(before, f, p) if before else None for f, p in files.items()}
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = {"n_bins": args.n_bins, "resamples": args.resamples, "level": args.level, "seed": args.seed}
    columns = {}
    if before is not None:
        columns[f"{args.before.stem} (before)"] = evaluate_predictions(before.probs, before.labels, **options)
    for f, p in files.items():
        block = evaluate_predictions(p.probs, p.labels, **options, before=pairs[f])
        record = {
            "file": str(f),
            "format": p.format,
            "before": None if args.before is None else str(args.before),
            "n_bins": args.n_bins,
            "bootstrap": {"resamples": args.resamples, "level": args.level, "seed": args.seed, "interval": INTERVALS},
            "metrics": block,
        }
        write_json(args.out / f"{f.stem}.json", record)
        columns[f.stem] = block
    print(_table(columns))
    for f in files:
        change = columns[f.stem].get("improvement")
        if change:
            print(f"\n{f.stem} - {args.before.stem} [{args.level:.0%} interval], * when it excludes 0:")
            for m, label in SHOWN.items():
                d = change[m]
                star = "*" if d["excludes_zero"] else ""
                print(f"  {label:<24} {with_interval(d['difference'], d['ci95'], signed=True)}{star}")
    if args.resamples:
        print(f"\n[lo, hi]: {args.level:.0%} intervals, {args.resamples} resamples of the questions.")
        print(INTERVALS.replace("; ", ";\n") + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
