"""Bootstrap cost: every interval of one set before and after and of their changes, idle and on a busy machine.

    python bench/bootstrap_bench.py                    # 240 and 14,042 questions x 4 options, 1,000 resamples
    python bench/bootstrap_bench.py --busy 2           # the same with 2 processes spinning on the CPUs meanwhile

Times ``evaluate_predictions.paired_block`` given the point values (what a run asks for after computing them:
the resamples, the debiased conf-ECE and cw-ECE intervals by test inversion before, after and of the change, and
the percentile intervals of accuracy, Brier and NLL and of their changes), which runs torch on one thread
inside; and, for comparison, the same computation with torch on two threads (``--threads``), the setting that
ran 3-16x slower on a busy machine. Also one smECE (relplot), which is why smECE gets no interval. Targets: 240
questions well under 1 s on one core, 14,042 under a few seconds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import torch

from calibration_lightning.calibration import intervals
from calibration_lightning.calibration.metrics import metric
from calibration_lightning.predictions import paired_block, phase_metrics


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _threaded(before, after, labels, threads: int) -> None:
    """The same resamples and intervals as ``paired_block``, with torch on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sets = intervals.resample([(before, labels), (after, labels)], 10, 1000, 0)
        [intervals.phase_intervals(r, 0.95) for r in sets]
        intervals.change_intervals(*sets, 0.95)
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="*", default=[240, 14_042], help="questions (MMLU's test: 14,042)")
    parser.add_argument("--k", type=int, default=4, help="options per question")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the comparison run")
    parser.add_argument("--busy", type=int, default=0, help="processes spinning on the CPUs during the timing")
    args = parser.parse_args()
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{os.cpu_count()} CPUs, {args.busy} spinning processes, load average {load:.1f}; 1,000 resamples")
        for n in args.n:
            g = torch.Generator().manual_seed(0)
            logits = torch.randn(n, args.k, generator=g) * 2
            labels = torch.randint(0, args.k, (n,), generator=g)
            before, after = torch.softmax(logits, dim=1), torch.softmax(logits / 2, dim=1)
            points = [phase_metrics(p, labels) for p in (before, after)]
            wall, cpu = _timed(lambda: paired_block(before, after, labels, tuple(points)), args.repeats)  # noqa: B023
            print(f"N={n:>6} x K={args.k}: paired_block (one thread inside): median {wall:.3f} s wall, {cpu:.3f} s CPU")
            wall, cpu = _timed(lambda: _threaded(before, after, labels, args.threads), args.repeats)  # noqa: B023
            print(f"{'':>15}  the same on {args.threads} torch threads: median {wall:.3f} s wall, {cpu:.3f} s CPU")
            start = time.perf_counter()
            metric("smooth_ece", after, labels)
            smece = time.perf_counter() - start
            print(
                f"{'':>15}  one smECE (relplot): {smece * 1000:.1f} ms -> {2000 * smece:.1f} s for 1,000 resamples x 2"
            )
    finally:
        stop.set()
        for p in spinners:
            p.join()


if __name__ == "__main__":
    main()
