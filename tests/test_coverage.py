"""An independent coverage check of the intervals through ``evaluate_predictions`` (the issue's "done when").

Populations of 240 questions with 4 options whose accuracy is confidence - g in every bin: the top-label
confidence c is uniform on [1/4 + g, 1], the top option is right with probability c - g, so the population
conf-ECE is g under any binning (l1 and l2 alike). Two models answer the same questions, their correctness
coupled through one uniform per question. ``bench/coverage_bench.py`` runs the full grid.
"""

import torch

from calibration_lightning import evaluate_predictions


def _models(n, k, gaps, generator):
    labels = torch.randint(k, (n,), generator=generator)
    wrong = (labels + torch.randint(1, k, (n,), generator=generator)) % k
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    models = []
    for g in gaps:
        conf = 1 / k + g + (1 - 1 / k - g) * torch.rand(n, generator=generator, dtype=torch.float64)
        pred = torch.where(u < conf - g, labels, wrong)
        probs = ((1 - conf) / (k - 1))[:, None].repeat(1, k)
        probs[torch.arange(n), pred] = conf
        models.append(probs.float())
    return models, labels


def _covers(ci, value):
    return ci[0] - 1e-12 <= value <= ci[1] + 1e-12


def test_conf_ece_intervals_cover_near_zero_and_far_from_it_and_the_paired_test_holds_its_level():
    reps, n, resamples = 100, 240, 500
    generator = torch.Generator().manual_seed(2024)
    hits = {0.0: [], 0.03: [], 0.15: [], "change": [], "false positive": [], "detected": []}
    widths = {0.0: [], 0.03: [], 0.15: []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small problems: thread hand-offs would cost more than the work
    try:
        for rep in range(reps):
            (miscalibrated, calibrated), labels = _models(n, 4, (0.15, 0.0), generator)
            # 0.15 -> 0: the calibrated model scored after the miscalibrated one
            fixed = evaluate_predictions(calibrated, labels, resamples=resamples, seed=rep, before=miscalibrated)
            alone = evaluate_predictions(miscalibrated, labels, resamples=resamples, seed=rep)
            (first, second), labels = _models(n, 4, (0.03, 0.03), generator)
            same = evaluate_predictions(second, labels, resamples=resamples, seed=rep, before=first)  # 0.03 -> 0.03
            for g, block in ((0.0, fixed), (0.15, alone), (0.03, same)):
                lo, hi = block["ci95"]["conf_ece"]
                hits[g].append(_covers([lo, hi], g))
                widths[g].append(hi - lo)
            hits["change"].append(_covers(fixed["improvement"]["conf_ece"]["ci95"], -0.15))
            hits["detected"].append(fixed["improvement"]["conf_ece"]["excludes_zero"])
            hits["false positive"].append(same["improvement"]["conf_ece"]["excludes_zero"])
    finally:
        torch.set_num_threads(threads)
    rate = {k: sum(v) / reps for k, v in hits.items()}
    width = {k: sum(v) / reps for k, v in widths.items()}
    assert all(rate[g] >= 0.90 and width[g] <= 0.18 for g in widths), (rate, width)
    assert rate["change"] >= 0.90, rate
    assert rate["false positive"] <= 0.10, rate
    assert rate["detected"] >= 0.3, rate  # not vacuous: a fall from 0.15 to 0 on 240 questions is often seen
