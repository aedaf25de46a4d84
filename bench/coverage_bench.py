"""Coverage of the debiased conf-ECE / cw-ECE intervals and level and power of the paired test, on populations
whose calibration error is known.

    python bench/coverage_bench.py --jobs 2                        # the full table (bench/RESULTS.md)
    python bench/coverage_bench.py --grid --n 240 --k 4 --reps 300  # part of the grid
    python bench/coverage_bench.py --shapes onebin_g05 strong       # some of the shapes

Grid populations (N questions, K options, gap g): the top-label confidence c is uniform on [low, high] (default
[1/K + g, 1]) and the top option is right with probability c - g; the other options share 1 - c equally, and
a wrong answer picks one of them at random. Every confidence bin has accuracy = confidence - g, so the population
conf-ECE is g under any binning, l1 and l2 alike. Classwise, the population l2 value is the unbiased estimate on
2,000,000 questions (1,000,000 for K > 10; its error is below 1e-3). Each case is a pair of phases answering the
same questions (correctness coupled through one uniform per question, confidences drawn independently): "g no
change" (both phases at g: a null for the paired test, and two coverage samples per repetition) and "0.15 -> 0".

Shapes (``SHAPES``): the grid's construction with other confidence ranges, sizes and K (one occupied bin, a strong
model, N = 30 and 50, K = 2 and 26, confidences near 1), and Dirichlet pairs (``dirichlet``): probabilities
Dirichlet(1, ..., 1) over K = 4 options with labels drawn from them (calibrated, classwise too); "drop" raises
each top probability by 0.15 before (scaling the others down; capped at 1), so the change is -0.1496 (its
population value on 2,000,000 questions); "null g" raises both phases' top by g plus independent U(-0.05, 0.05)
noise (the phases differ question by question and have the same population ECE).

Every repetition calls ``evaluate_predictions.paired_block`` (1,000 resamples) with the point values it needs
(the debiased ECEs and the means), as a run does. Columns: coverage (both phases pooled) and mean width of the
conf-ECE and cw-ECE intervals, coverage and width of the conf-ECE change and the cw-ECE change, ``excl``: how
often the conf-ECE change excludes 0 (no change: the test's false-positive rate at level 0.05; a change: its
power), ``null``: null intervals. The standard error of a coverage p over r samples is sqrt(p (1 - p) / r): 0.011
at p = 0.95 over 400 pooled samples, 0.015 over 200, 0.035 over 40.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import time
import zlib

import torch

from calibration_lightning.calibration.debiased import debiased_ece
from calibration_lightning.calibration.metrics import brier_terms, nll_terms, top_label
from calibration_lightning.predictions import paired_block

GAPS = (0.0, 0.01, 0.03, 0.1, 0.3)
SIZES = (100, 240, 1000, 14042)
OPTIONS = (4, 10)
DROP = 0.1496  # the Dirichlet drop's population conf-ECE before (after: 0)
# name: (N, K, before, after, low, high) for the grid's construction; ("dirichlet", N, kind) for Dirichlet pairs
SHAPES = {
    "onebin_g05": (240, 4, 0.05, 0.05, 0.71, 0.79),
    "onebin_g0": (240, 4, 0.0, 0.0, 0.71, 0.79),
    "strong": (240, 4, 0.05, 0.05, 0.85, 1.0),
    "n30_g0": (30, 4, 0.0, 0.0, 0.35, 0.95),
    "n30_g15": (30, 4, 0.15, 0.15, 0.35, 0.95),
    "n50_g0": (50, 4, 0.0, 0.0, 0.35, 0.95),
    "n50_g03": (50, 4, 0.03, 0.03, 0.35, 0.95),
    "k2_g0": (240, 2, 0.0, 0.0, 0.5, 0.99),
    "k2_g1": (240, 2, 0.1, 0.1, 0.6, 0.99),
    "k26_g0": (240, 26, 0.0, 0.0, 0.1, 0.9),
    "k26_g1": (240, 26, 0.1, 0.1, 0.15, 0.9),
    "n30_k26": (30, 26, 0.0, 0.0, 0.1, 0.9),
    "hi_n240": (240, 4, 0.0, 0.0, 0.95, 1.0),
    "hi_n50": (50, 4, 0.0, 0.0, 0.95, 1.0),
    "c99_n30": (30, 4, 0.0, 0.0, 0.99, 0.99),
    "dir_drop": ("dirichlet", 240, "drop"),
    "dir_null0": ("dirichlet", 240, 0.0),
    "dir_null1": ("dirichlet", 240, 0.1),
}


def _probabilities(conf: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    probs = ((1 - conf) / (k - 1))[:, None].repeat(1, k)
    probs[torch.arange(len(conf)), pred] = conf
    return probs


def population(
    n: int, k: int, gaps: tuple, generator: torch.Generator, low=None, high=1.0
) -> tuple[list, torch.Tensor]:
    """``n`` questions answered by one model per gap: ``([probs [n, k] per model], labels [n])``."""
    labels = torch.randint(k, (n,), generator=generator)
    wrong = (labels + torch.randint(1, k, (n,), generator=generator)) % k
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    models = []
    for g in gaps:
        lo = 1 / k + g if low is None else low
        conf = lo + (high - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        models.append(_probabilities(conf, torch.where(u < conf - g, labels, wrong), k))
    return models, labels


def _raise_top(p: torch.Tensor, g: torch.Tensor | float) -> torch.Tensor:
    top, rows = p.argmax(1), torch.arange(len(p))
    old = p[rows, top]
    new = (old + g).clamp(max=1.0)
    out = p * ((1 - new) / (1 - old).clamp_min(1e-12))[:, None]
    out[rows, top] = new
    return out


def dirichlet(n: int, kind, generator: torch.Generator, k: int = 4) -> tuple[list, torch.Tensor]:
    """Dirichlet pairs (module docstring): "drop" or a null at gap ``kind``."""
    p = torch.distributions.Dirichlet(torch.ones(k, dtype=torch.float64)).sample((n,))  # torch's global generator
    labels = torch.multinomial(p, 1, generator=generator).squeeze(1)
    if kind == "drop":
        return [_raise_top(p, 0.15), p], labels
    noise = [(kind + 0.1 * (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5)).clamp_min(0) for _ in "ab"]
    return [_raise_top(p, noise[0]), _raise_top(p, noise[1])], labels


@functools.cache
def truths(shape: tuple) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((conf before, conf after), (cw before, cw after))``: the population l2 values of a case."""
    generator = torch.Generator().manual_seed(12345)
    if shape[0] == "dirichlet":
        torch.manual_seed(12345)
        models, labels = dirichlet(2_000_000, shape[2], generator)
        conf = (DROP, 0.0) if shape[2] == "drop" else (None, None)  # a null: both the same, not needed
        return conf, tuple(debiased_ece(m, labels, 10, "cw") for m in models)
    n, k, gb, ga, low, high = shape
    models, labels = population(2_000_000 if k <= 10 else 1_000_000, k, (gb, ga), generator, low, high)
    return (gb, ga), tuple(debiased_ece(m, labels, 10, "cw") for m in models)


def _points(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """The point values ``paired_block`` needs for its intervals (a run's ``phase_metrics`` has them all)."""
    terms = {
        "accuracy": top_label(probs, labels)[1],
        "brier": brier_terms(probs, labels),
        "nll": nll_terms(probs, labels),
    }
    out = {name: float(t.mean()) for name, t in terms.items()}
    return {**out, **{f"{kind}_ece_debiased": debiased_ece(probs, labels, 10, kind) for kind in ("conf", "cw")}}


def _covers(ci: list[float] | None, value: float | None) -> float | None:
    return None if ci is None or value is None else float(ci[0] - 1e-9 <= value <= ci[1] + 1e-9)


def run(shape: tuple, reps: int, resamples: int, seed: int) -> dict:
    """Coverage and width of the intervals of one case over ``reps`` repetitions (module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    (conf, cw) = truths(shape)
    stats: dict[str, list] = {k: [] for k in ("conf", "conf_w", "cw", "cw_w", "chg", "chg_w", "cwchg", "excl", "null")}
    for rep in range(reps):
        if shape[0] == "dirichlet":
            models, labels = dirichlet(shape[1], shape[2], generator)
        else:
            models, labels = population(shape[0], shape[1], shape[2:4], generator, *shape[4:])
        points = [_points(m, labels) for m in models]
        out = paired_block(*models, labels, tuple(points), resamples=resamples, seed=rep)
        for phase, c, w in zip(("before", "after"), conf, cw):
            for name, truth, key in (("conf_ece_debiased", c, "conf"), ("cw_ece_debiased", w, "cw")):
                ci = out[phase]["ci95"][name]
                stats["null"].append(ci is None)
                if ci is not None:
                    stats[key].append(_covers(ci, truth))
                    stats[f"{key}_w"].append(ci[1] - ci[0])
        change = out["improvement"]["conf_ece_debiased"]
        if change["ci95"] is not None:
            truth = None if conf[0] is None else conf[1] - conf[0]
            stats["chg"].append(_covers(change["ci95"], 0.0 if truth is None else truth))
            stats["chg_w"].append(change["ci95"][1] - change["ci95"][0])
            stats["excl"].append(change["excludes_zero"])
        cw_change = out["improvement"]["cw_ece_debiased"]["ci95"]
        stats["cwchg"].append(_covers(cw_change, cw[1] - cw[0]))
    return {key: sum(map(float, v)) / len(v) if v else float("nan") for key, v in ((k, [x for x in v if x is not None])
            for k, v in stats.items())}  # fmt: skip


def _cell(job: tuple) -> str:
    label, shape, reps, resamples = job
    torch.set_num_threads(1)  # many small problems: a second thread waits for its peer on a busy machine
    r = run(shape, reps, resamples, seed=zlib.crc32(label.encode()))
    n, k = (shape[1], 4) if shape[0] == "dirichlet" else shape[:2]
    return (
        f"{n:>6} {k:>3} {label:<18} {reps:>5} {r['conf']:>8.3f} {r['conf_w']:>6.3f} {r['cw']:>7.3f} {r['cw_w']:>6.3f}"
        f" {r['chg']:>7.3f} {r['chg_w']:>6.3f} {r['excl']:>5.3f} {r['cwchg']:>7.3f} {r['null']:>5.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="store_true", help="only the grid (default: the grid and every shape)")
    parser.add_argument("--shapes", nargs="*", default=None, help=f"only these shapes of {', '.join(SHAPES)}")
    parser.add_argument("--n", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--k", type=int, nargs="*", default=list(OPTIONS))
    parser.add_argument("--gaps", type=float, nargs="*", default=list(GAPS))
    parser.add_argument("--reps", type=int, default=200, help="repetitions for N <= 240")
    parser.add_argument("--reps-1000", type=int, default=100, help="repetitions for 240 < N <= 1,000")
    parser.add_argument("--reps-large", type=int, default=20, help="repetitions for N > 1,000")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1, help="processes, one case each")
    args = parser.parse_args()
    jobs = []
    if args.shapes is None:
        for n in args.n:
            reps = args.reps if n <= 240 else args.reps_1000 if n <= 1000 else args.reps_large
            for k in args.k:
                cases = [(f"g={g:g} no change", (n, k, g, g, None, 1.0)) for g in args.gaps]
                jobs += [
                    (label, shape, reps, args.resamples)
                    for label, shape in cases + [("0.15 -> 0", (n, k, 0.15, 0.0, None, 1.0))]
                ]
    if not args.grid:
        jobs += [(name, SHAPES[name], args.reps, args.resamples) for name in args.shapes or SHAPES]
    print("nominal 95%; conf/cw: coverage of the population l2 binned ECE (both phases pooled) and mean width; chg:"
          " coverage of the\nconf-ECE change and mean width; excl: share of conf-ECE changes excluding 0; cw chg:"
          " coverage of the cw-ECE change; null: share of null intervals")  # fmt: skip
    head = f"{'N':>6} {'K':>3} {'case':<18} {'reps':>5} {'conf cov':>8} {'width':>6} {'cw cov':>7} {'width':>6}"
    head += f" {'chg cov':>7} {'width':>6} {'excl':>5} {'cw chg':>7} {'null':>5}"
    print(head + "\n" + "-" * len(head), flush=True)
    start = time.perf_counter()
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
