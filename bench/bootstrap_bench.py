"""Bootstrap cost: intervals on every metric before and after, and of the paired difference, for MMLU's size.

    python bench/bootstrap_bench.py                     # 14,042 questions x 4 options, 1,000 resamples
    python bench/bootstrap_bench.py --n 240 --threads 1

Prints the median wall time and CPU time of ``paired_intervals`` (one draw of R x N resampled
questions; the debiased conf-ECE and cw-ECE of each resample's shrunk world, accuracy, Brier, NLL, MCE and
adaptive ECE for all R resamples before and after; the intervals and those of the changes; the point
differences of every metric, smECE included) and, for scale, one smECE
computation (relplot), which is why smECE gets no interval. Target: under 1 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from calibration_lightning.calibration.bootstrap import paired_intervals
from calibration_lightning.calibration.metrics import metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=14_042, help="questions (MMLU's test split: 14,042)")
    parser.add_argument("--k", type=int, default=4, help="options per question")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.n, args.k, generator=g) * 2
    labels = torch.randint(0, args.k, (args.n,), generator=g)
    before, after = torch.softmax(logits, dim=1), torch.softmax(logits / 2, dim=1)
    paired_intervals(before, after, labels, 10, args.resamples)  # warm-up
    times, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        paired_intervals(before, after, labels, 10, args.resamples)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    start = time.perf_counter()
    metric("smooth_ece", after, labels)
    smece = time.perf_counter() - start

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"N={args.n} x K={args.k}, R={args.resamples}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f}"
    )
    print(f"paired_intervals (before + after + difference, all metrics): median {statistics.median(times):.3f} s, "
          f"min {min(times):.3f} s over {args.repeats}  (target < 1 s)")  # fmt: skip
    print(f"  CPU time of the process (all threads): median {statistics.median(cpu):.3f} s (wall time on a busy "
          "machine is CPU time / the share of the cores this process gets)")  # fmt: skip
    print(f"one smECE (relplot): {smece * 1000:.1f} ms -> {2 * args.resamples * smece:.1f} s for R resamples x 2")


if __name__ == "__main__":
    main()
