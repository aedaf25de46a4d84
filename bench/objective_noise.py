"""How well each validation metric tells trials apart on the validation split a run chooses on.

    python bench/objective_noise.py RUN_DIR RUN_DIR [RUN_DIR ...] [--resamples 2000]

Each run's ``checkpoints/best.ckpt`` holds the validation scores of the round it kept (what its objective was
computed from). For every candidate objective this prints each trial's value with its bootstrap standard error
over the validation questions, and for every pair of trials the difference with its paired standard error (the
same resampled questions) and z = difference / se. A metric whose trials differ by many standard errors ranks a
sweep's trials; one whose differences sit inside the noise ranks them by chance. The last line is the median |z|
over the pairs, per metric: the number behind ``optimized_metric``'s default.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calibration_lightning.calibration.confidence import set_probabilities  # noqa: E402
from calibration_lightning.calibration.metrics import metric  # noqa: E402

OBJECTIVES = ("nll", "brier", "conf_ece", "cw_ece", "adaptive_ece", "accuracy")


def validation_scores(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept round's validation probabilities and labels, in split order."""
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["val_scored"]
    order = best["index"].argsort()
    return set_probabilities(best["letter_logits"][order], best["n_choices"][order]), best["labels"][order]


def resampled(probs: torch.Tensor, labels: torch.Tensor, draws: torch.Tensor, name: str) -> torch.Tensor:
    """The metric on each resample of the questions (``draws [R, N]``)."""
    return torch.stack([metric(name, probs[d], labels[d]) for d in draws]).double()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    kept = [run for run in args.runs if (run / "checkpoints" / "best.ckpt").exists()]
    for run in set(args.runs) - set(kept):
        print(f"{run}: no best.ckpt (no round beat the untrained model): left out")
    trials = {run.name: validation_scores(run) for run in kept}
    labels = next(iter(trials.values()))[1]
    if any(not torch.equal(y, labels) for _, y in trials.values()):
        raise SystemExit("error: the runs did not score the same validation questions")
    draws = torch.randint(len(labels), (args.resamples, len(labels)), generator=torch.Generator().manual_seed(0))
    print(f"{len(trials)} trials, {len(labels)} validation questions, {args.resamples} resamples")
    median_z = {}
    for name in OBJECTIVES:
        values = {t: (float(metric(name, p, y)), resampled(p, y, draws, name)) for t, (p, y) in trials.items()}
        print(f"\n{name}: " + ", ".join(f"{t} {v:.4f} (se {r.std():.4f})" for t, (v, r) in values.items()))
        z = []
        for a, b in itertools.combinations(values, 2):
            diff, se = values[a][0] - values[b][0], float((values[a][1] - values[b][1]).std())
            z.append(abs(diff) / se if se > 0 else float("inf"))
            print(f"  {a} - {b}: {diff:+.4f} (paired se {se:.4f}, z {diff / se if se > 0 else float('inf'):+.2f})")
        median_z[name] = statistics.median(z) if z else float("nan")
    print("\nmedian |z| over the pairs: " + ", ".join(f"{n} {z:.2f}" for n, z in median_z.items()))


if __name__ == "__main__":
    main()
