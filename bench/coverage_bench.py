"""Coverage of the conf-ECE and cw-ECE intervals on populations whose calibration error is known.

    python bench/coverage_bench.py --jobs 2             # the full grid (about 25 min of CPU)
    python bench/coverage_bench.py --n 240 --k 4 --reps 300

Population with gap g (K options): the top-label confidence c is uniform on [1/K + g, 1] and the top option is
right with probability c - g; the other options share 1 - c equally, and a wrong answer picks one of them at
random. Every confidence bin then has accuracy = confidence - g, so the population conf-ECE is g under any
binning, l1 and l2 alike (``debiased.py``: the intervals are for the l2 binned value). Classwise, class j's
gap is -g where j is the top option and g / (K - 1) elsewhere, binned together where those probabilities share
a bin: its population l2 value is computed once per (g, K) from 2,000,000 questions with the unbiased
estimator (its sampling error is below 1e-4 on the root scale).

Paired populations (``before`` and ``after`` answer the same questions, their correctness coupled through one
uniform per question, their confidences drawn independently): "no change" (g before = g after, for every g of
the grid) gives the false-positive rate of ``excludes_zero`` and two more coverage samples per repetition;
"change -0.15" (0.15 before, 0 after) the coverage of the change and how often it is detected.

Every repetition calls ``evaluate_predictions(after, labels, before=before)`` and ``evaluate_predictions(before,
labels)`` (1,000 resamples), exactly as a run or the CLI computes its intervals. Repetitions: ``--reps`` for N <=
240, ``--reps-1000`` and ``--reps-large`` (fewer: one repetition of 14,042 questions costs about 2 s of CPU);
the standard error of a coverage p over r samples is sqrt(p (1 - p) / r): 0.015 at p = 0.95 and r = 200 (400
pooled phase samples: 0.011), 0.049 at r = 20. The default grid takes about 25 minutes of CPU.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import time

import torch
from torch import Tensor

from calibration_lightning import evaluate_predictions
from calibration_lightning.calibration.debiased import bin_sums, debiased_square, slots

GAPS = (0.0, 0.01, 0.03, 0.1, 0.3)
SIZES = (100, 240, 1000, 14042)
OPTIONS = (4, 10)
CHANGE = (0.15, 0.0)  # before, after


def _probabilities(conf: Tensor, pred: Tensor, k: int) -> Tensor:
    probs = ((1 - conf) / (k - 1))[:, None].repeat(1, k)
    probs[torch.arange(len(conf)), pred] = conf
    return probs.float()


def population(n: int, k: int, gaps: tuple[float, ...], generator: torch.Generator) -> tuple[list[Tensor], Tensor]:
    """``n`` questions answered by one model per gap in ``gaps``: ``([probs [n, k] per model], labels [n])``."""
    labels = torch.randint(k, (n,), generator=generator)
    wrong = (labels + torch.randint(1, k, (n,), generator=generator)) % k
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    models = []
    for g in gaps:
        low = 1 / k + g
        conf = low + (1 - low) * torch.rand(n, generator=generator, dtype=torch.float64)
        right = u < conf - g
        models.append(_probabilities(conf, torch.where(right, labels, wrong), k))
    return models, labels


@functools.cache
def classwise_truth(g: float, k: int, n: int = 2_000_000) -> float:
    """The population l2 binned cw-ECE of ``population``: the unbiased estimate on ``n`` questions."""
    (probs,), labels = population(n, k, (g,), torch.Generator().manual_seed(12345))
    index, residual, total_bins, classes = slots(probs, labels, 10, "cw")
    return max(float(debiased_square(bin_sums(index, residual, total_bins), n, classes)), 0.0) ** 0.5


def _covers(ci: list[float], value: float) -> bool:
    return ci[0] - 1e-12 <= value <= ci[1] + 1e-12  # float32 inputs: a value of exactly 0 may come back as 1e-17


def run(n: int, k: int, pair: tuple[float, float], reps: int, resamples: int, seed: int) -> dict:
    """Coverage and mean width of conf-ECE / cw-ECE intervals (both phases pooled) and of the change."""
    generator = torch.Generator().manual_seed(seed)
    truth_cw = [classwise_truth(g, k) for g in pair]
    stats = {"conf": [], "conf_w": [], "cw": [], "cw_w": [], "change": [], "change_w": [], "excl": []}
    for rep in range(reps):
        (before, after), labels = population(n, k, pair, generator)
        block = evaluate_predictions(after, labels, resamples=resamples, seed=rep, before=before)
        phases = (evaluate_predictions(before, labels, resamples=resamples, seed=rep), block)
        for g, cw, phase in zip(pair, truth_cw, phases):
            for name, value, key in (("conf_ece", g, "conf"), ("cw_ece", cw, "cw")):
                ci = phase["ci95"][name]
                stats[key].append(_covers(ci, value))
                stats[f"{key}_w"].append(ci[1] - ci[0])
        change = block["improvement"]["conf_ece"]
        stats["change"].append(_covers(change["ci95"], pair[1] - pair[0]))
        stats["change_w"].append(change["ci95"][1] - change["ci95"][0])
        stats["excl"].append(change["excludes_zero"])
    return {key: sum(map(float, v)) / len(v) for key, v in stats.items()}


def _cell(job: tuple) -> str:
    n, k, label, pair, reps, resamples, threads = job
    torch.set_num_threads(threads)
    r = run(n, k, pair, reps, resamples, seed=n * 100 + k)
    return (
        f"{n:>6} {k:>3} {label:<16} {reps:>5} {r['conf']:>8.3f} {r['conf_w']:>6.3f} {r['cw']:>7.3f}"
        f" {r['cw_w']:>6.3f} {r['change']:>7.3f} {r['change_w']:>6.3f} {r['excl']:>5.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--k", type=int, nargs="*", default=list(OPTIONS))
    parser.add_argument("--gaps", type=float, nargs="*", default=list(GAPS))
    parser.add_argument("--reps", type=int, default=200, help="repetitions for N <= 240")
    parser.add_argument("--reps-1000", type=int, default=100, help="repetitions for 240 < N <= 1,000")
    parser.add_argument("--reps-large", type=int, default=20, help="repetitions for N > 1,000")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=1, help="processes, one grid cell each")
    args = parser.parse_args()
    print(
        "nominal 95%; conf/cw: coverage of the population l2 binned ECE (both phases pooled) and mean width;"
        "\nchange: coverage of after - before and mean width; excl: share of intervals of the change excluding 0"
        "\n(no change: false positives, level 0.05; change -0.15: detections)"
    )
    head = f"{'N':>6} {'K':>3} {'case':<16} {'reps':>5} {'conf cov':>8} {'width':>6} {'cw cov':>7} {'width':>6}"
    head += f" {'chg cov':>7} {'width':>6} {'excl':>5}"
    print(head + "\n" + "-" * len(head), flush=True)
    start = time.perf_counter()
    jobs = []
    for n in args.n:
        reps = args.reps if n <= 240 else args.reps_1000 if n <= 1000 else args.reps_large
        for k in args.k:
            cases = [(f"g={g:g} no change", (g, g)) for g in args.gaps] + [("0.15 -> 0", CHANGE)]
            jobs += [(n, k, label, pair, reps, args.resamples, args.threads) for label, pair in cases]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for line in pool.imap(_cell, jobs):
                print(line, flush=True)
    else:
        for job in jobs:
            print(_cell(job), flush=True)
    print(f"{time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()
