"""Calibration metrics against hand-computed values and torchmetrics."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from calibration_lightning import classwise_ece, conf_ece
from calibration_lightning.calibration.collection import calibration_metrics
from calibration_lightning.calibration.metrics import (
    METRICS,
    NLL_FLOOR,
    accuracy,
    adaptive_ece,
    all_metrics,
    brier_score,
    brier_terms,
    equal_mass_ece,
    max_calibration_error,
    negative_log_likelihood,
    nll_terms,
    smooth_ece,
)

# Three rows, K = 3, no value on a bin boundary. Worked out by hand in the comments below.
PROBS = torch.tensor([[0.55, 0.33, 0.12], [0.15, 0.81, 0.04], [0.23, 0.13, 0.64]])
LABELS = torch.tensor([0, 2, 2])


def test_conf_ece_by_hand():
    # confidences 0.55 (right, bin 5), 0.81 (wrong, bin 8), 0.64 (right, bin 6): each alone in its bin
    # ECE = (|1-0.55| + |0-0.81| + |1-0.64|) / 3 = 1.62 / 3
    assert conf_ece(PROBS, LABELS).item() == pytest.approx(0.54, abs=1e-6)
    assert max_calibration_error(PROBS, LABELS).item() == pytest.approx(0.81, abs=1e-6)


def test_classwise_ece_by_hand():
    # class 0: p=[.55,.15,.23], y=[1,0,0] -> (.45+.15+.23)/3 ; class 1: p=[.33,.81,.13], y=0 -> (.33+.81+.13)/3
    # class 2: p=[.12,.04,.64], y=[0,1,1] -> (.12+.96+.36)/3 ; mean over the 3 classes
    expected = ((0.83 + 1.27 + 1.44) / 3) / 3
    assert classwise_ece(PROBS, LABELS).item() == pytest.approx(expected, abs=1e-6)


def test_shared_bin_and_exact_one():
    # 0.95 (right) and 1.0 (right) share the last bin: |1 - 0.975| * 2/4; 0.65 wrong: 0.65 * 1/4;
    # 0.75 right: 0.25 * 1/4. Total 0.0125 + 0.1625 + 0.0625.
    probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.25, 0.75], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    assert conf_ece(probs, labels).item() == pytest.approx(0.2375, abs=1e-6)
    assert classwise_ece(probs, labels).item() == pytest.approx(0.2375, abs=1e-6)


def test_confidence_one_goes_in_the_last_bin():
    # Our bins: the last one is [0.9, 1.0]. A 1.0 miss and a 0.92 hit share it: |0.5 - 0.96| = 0.46.
    # (torchmetrics gives 1.0 a bin of its own and would report (0.08 + 1.0) / 2 = 0.54.)
    probs = torch.tensor([[1.0, 0.0], [0.92, 0.08]])
    labels = torch.tensor([1, 0])
    assert conf_ece(probs, labels).item() == pytest.approx(0.46, abs=1e-6)


def test_other_metrics_by_hand():
    assert accuracy(PROBS, LABELS).item() == pytest.approx(2 / 3)
    brier = ((0.45**2 + 0.33**2 + 0.12**2) + (0.15**2 + 0.81**2 + 0.96**2) + (0.23**2 + 0.13**2 + 0.36**2)) / 3
    assert brier_score(PROBS, LABELS).item() == pytest.approx(brier, abs=1e-6)
    nll = -(math.log(0.55) + math.log(0.04) + math.log(0.64)) / 3
    assert negative_log_likelihood(PROBS, LABELS).item() == pytest.approx(nll, abs=1e-5)


def _random_probs(n, k, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, k, generator=g) * scale, dim=-1)
    labels = torch.randint(0, k, (n,), generator=g)
    return probs, labels


def _torchmetrics_classwise(probs, labels, n_bins):
    k = probs.shape[1]
    values = [BinaryCalibrationError(n_bins=n_bins, norm="l1")(probs[:, j], (labels == j).long()) for j in range(k)]
    return torch.stack(values).mean()


@pytest.mark.parametrize("k,n_bins,seed", [(4, 10, 0), (2, 15, 1), (5, 10, 2), (26, 20, 3)])
def test_matches_torchmetrics_on_random_inputs(k, n_bins, seed):
    probs, labels = _random_probs(2000, k, seed)
    reference = MulticlassCalibrationError(num_classes=k, n_bins=n_bins, norm="l1")(probs, labels)
    assert conf_ece(probs, labels, n_bins).item() == pytest.approx(reference.item(), abs=1e-5)
    assert classwise_ece(probs, labels, n_bins).item() == pytest.approx(
        _torchmetrics_classwise(probs, labels, n_bins).item(), abs=1e-5
    )


def test_matches_torchmetrics_with_exact_zeros_and_ones():
    # One-hot rows (confidence exactly 1, other classes exactly 0) mixed with rows far from 1, so that the
    # samples at 1.0 are the only ones in the last bin and the two binnings agree.
    onehot = torch.eye(4)[torch.tensor([0, 1, 2, 3, 0, 1])]
    soft = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.25, 0.35, 0.3, 0.1], [0.1, 0.1, 0.45, 0.35]])
    probs = torch.cat([onehot, soft])
    labels = torch.tensor([0, 1, 3, 3, 2, 1, 0, 1, 3])
    reference = MulticlassCalibrationError(num_classes=4, n_bins=10, norm="l1")(probs, labels)
    assert conf_ece(probs, labels).item() == pytest.approx(reference.item(), abs=1e-6)
    assert classwise_ece(probs, labels).item() == pytest.approx(
        _torchmetrics_classwise(probs, labels, 10).item(), abs=1e-6
    )


def test_empty_bins_contribute_nothing():
    probs = torch.tensor([[0.55, 0.45]] * 4)
    labels = torch.tensor([0, 0, 1, 0])
    # one non-empty bin: |0.75 - 0.55|
    assert conf_ece(probs, labels, n_bins=10).item() == pytest.approx(0.2, abs=1e-6)
    assert conf_ece(probs, labels, n_bins=50).item() == pytest.approx(0.2, abs=1e-6)


def test_metric_collection_equals_functional_over_batches():
    probs, labels = _random_probs(300, 4, 7)
    collection = calibration_metrics(10).clone(prefix="val/")
    for chunk in range(0, 300, 64):
        collection.update(probs[chunk : chunk + 64], labels[chunk : chunk + 64])
    computed = {k: v.item() for k, v in collection.compute().items()}
    expected = all_metrics(probs, labels, 10)
    names = ("conf_ece", "cw_ece", "accuracy", "brier", "nll", "mce", "adaptive_ece", "smooth_ece")
    assert set(computed) == {f"val/{k}" for k in names}
    for key, value in computed.items():
        assert value == pytest.approx(expected[key.split("/")[1]], abs=1e-6)


PUBLIC = (conf_ece, classwise_ece, accuracy, brier_score, negative_log_likelihood, max_calibration_error, adaptive_ece)


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__name__)
def test_numpy_any_stride_and_binary_inputs_give_the_tensor_values(fn):
    probs, labels = _random_probs(60, 3, 5)
    expected = fn(probs.double(), labels).item()
    flipped = np.ascontiguousarray(probs.double().numpy()[::-1])[::-1]  # a negative-stride view of the same rows
    assert flipped.strides[0] < 0
    assert fn(flipped, labels.numpy()).item() == pytest.approx(expected, abs=1e-12)
    every_other = np.repeat(probs.double().numpy(), 2, axis=0)[::2]  # a row stride of two rows
    assert fn(every_other, labels.numpy()).item() == pytest.approx(expected, abs=1e-12)
    # Binary: [N] probabilities of class 1 with 0/1 labels are the two columns [1 - p, p].
    p1 = probs[:, 0].double()
    y = (labels == 0).long()
    two = torch.stack([1 - p1, p1], dim=1)
    assert fn(p1.numpy()[::-1], y.numpy()[::-1]).item() == pytest.approx(fn(two.flip(0), y.flip(0)).item(), abs=1e-12)
    assert fn(p1, y.bool()).item() == pytest.approx(fn(two, y).item(), abs=1e-12)


@pytest.mark.parametrize(
    "probs,labels,message",
    [
        (torch.rand(5, 3, 2), torch.zeros(5, dtype=torch.long), r"probs must be \[N, K\] probabilities \(K >= 2\)"),
        (torch.ones(5, 1), torch.zeros(5, dtype=torch.long), r"probs must be \[N, K\]"),
        (torch.full((5, 2), 0.5), torch.zeros(4, dtype=torch.long), r"labels must be \[N\] = \[5\]"),
        (torch.full((5, 2), 0.5), torch.zeros(5), "labels must be integer class indices"),
        (torch.full((5, 2), 0.5), torch.full((5,), 2), r"labels must be in \[0, 2\), got 2..2"),
        (torch.full((2, 2), 0.7), torch.zeros(2, dtype=torch.long), "every row must sum to 1"),
        (torch.tensor([[1.5, -0.5]]), torch.zeros(1, dtype=torch.long), r"must be probabilities in \[0, 1\]"),
        (torch.tensor([0.2, float("nan")]), torch.zeros(2, dtype=torch.long), r"must be probabilities in \[0, 1\]"),
        (np.array(["a", "b"]), np.zeros(2, dtype=int), "must be a tensor or an array of numbers, got dtype <U1"),
        ([[0.5, 0.5], [1.0]], [0, 1], "must be a tensor or an array of numbers"),
    ],
)
def test_bad_inputs_are_one_clear_value_error(probs, labels, message):
    for fn in PUBLIC:
        with pytest.raises(ValueError, match=message):
            fn(probs, labels)


def test_per_question_terms_are_the_metrics_terms():
    brier = [0.45**2 + 0.33**2 + 0.12**2, 0.15**2 + 0.81**2 + 0.96**2, 0.23**2 + 0.13**2 + 0.36**2]
    assert brier_terms(PROBS, LABELS).tolist() == pytest.approx(brier, abs=1e-6)
    assert nll_terms(PROBS, LABELS).tolist() == pytest.approx([-math.log(0.55), -math.log(0.04), -math.log(0.64)])
    assert nll_terms(torch.tensor([[1.0, 0.0]]), torch.tensor([1])).item() == pytest.approx(-math.log(NLL_FLOOR))
    assert brier_score(PROBS, LABELS).item() == pytest.approx(sum(brier) / 3, abs=1e-6)


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_adaptive_ece_by_hand():
    # 4 samples, 2 equal-mass bins: {0.6 right, 0.7 wrong} -> |0.5 - 0.65|; {0.8, 0.9 right} -> |1 - 0.85|
    assert equal_mass_ece(_t(0.9, 0.6, 0.8, 0.7), _t(1, 1, 1, 0), 2).item() == pytest.approx(0.15)
    # 3 samples, 2 bins of 1.5: the middle sample (0.7, right) is split half and half.
    # bin 0: conf 0.6 + 0.35, correct 0 + 0.5 -> 0.45; bin 1: conf 0.35 + 0.9, correct 0.5 + 1 -> 0.25
    assert equal_mass_ece(_t(0.6, 0.7, 0.9), _t(0, 1, 1), 2).item() == pytest.approx((0.45 + 0.25) / 3)
    # Ties are one group with their mean correctness (1/3 here), whatever their order: bin 0 holds two of the
    # three 0.5s: |2/3 - 1.0|; bin 1 the third and 0.9: |1/3 + 1 - 1.4|. (0.4 / 3 + 0.2 / 3) / 4 = 0.1
    for hits in ((1, 0, 0, 1), (0, 0, 1, 1), (0, 1, 0, 1)):
        assert equal_mass_ece(_t(0.5, 0.5, 0.5, 0.9), _t(*hits), 2).item() == pytest.approx(0.1)
    # Confidences exactly 0 and 1: bins {0, 0} (one right) and {1, 1} (both right): (0.5 * 2 + 0) / 4
    assert equal_mass_ece(_t(1, 0, 1, 0), _t(1, 0, 1, 1), 2).item() == pytest.approx(0.25)
    # N = 1 (fewer samples than bins): every bin holds a slice of the one sample: |1 - 0.7|
    assert equal_mass_ece(_t(0.7), _t(1), 10).item() == pytest.approx(0.3)
    # Top-label: PROBS' confidences 0.55 (right), 0.64 (right), 0.81 (wrong) in 3 bins of one each = conf-ECE.
    assert adaptive_ece(PROBS, LABELS, 3).item() == pytest.approx(0.54, abs=1e-6)
    assert adaptive_ece(PROBS, LABELS, 3).item() == pytest.approx(conf_ece(PROBS, LABELS).item(), abs=1e-6)


def test_smooth_ece_by_hand():
    # One confidence c for every sample: the smoothed residual is acc - c everywhere, so smECE = |acc - c|
    # (relplot adds 1e-4 to the kernel density, hence the tolerance).
    def sm(conf, correct):
        probs = torch.stack([_t(*conf), 1 - _t(*conf)], dim=1)
        return smooth_ece(probs, torch.tensor([0 if c else 1 for c in correct])).item()

    assert sm([0.6] * 10, [1] * 10) == pytest.approx(0.4, abs=1e-4)
    assert sm([0.6] * 10, [1] * 6 + [0] * 4) == pytest.approx(0.0, abs=1e-9)  # calibrated
    assert sm([0.7], [1]) == pytest.approx(0.3, abs=1e-4)  # N = 1
    assert sm([1.0], [1]) == pytest.approx(0.0, abs=1e-9)  # confidence exactly 1, right
    assert sm([1.0], [0]) == pytest.approx(1.0, abs=1e-3)  # ... and wrong
    assert smooth_ece(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_every_reported_metric_on_four_questions_by_hand():
    """Confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.8 (right): each alone in a bin of width 0.1."""
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    values = all_metrics(probs, labels, 10)
    assert set(values) == {*METRICS, "n"}
    expected = {
        "conf_ece": (0.1 + 0.6 + 0.3 + 0.2) / 4,
        "cw_ece": ((0.1 + 0.6 + 0.3 + 0.2) / 4 + (0.1 + 0.6 + 0.3 + 0.2) / 4) / 2,  # each class alike here
        "accuracy": 0.75,
        "brier": (2 * 0.1**2 + 2 * 0.6**2 + 2 * 0.3**2 + 2 * 0.2**2) / 4,
        "nll": -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4,
        "mce": 0.6,
        "n": 4,
    }
    assert {k: values[k] for k in expected} == pytest.approx(expected)
    # two equal-mass bins: {0.6 wrong, 0.7 right} and {0.8, 0.9 both right}
    assert all_metrics(probs, labels, 2)["adaptive_ece"] == pytest.approx((abs(0.65 - 0.5) + abs(0.85 - 1)) / 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_value_written_b_over_n_is_in_bin_b_in_every_dtype_and_every_estimate(dtype):
    from calibration_lightning import evaluate_predictions
    from calibration_lightning.calibration.binning import bin_index

    values = torch.tensor([b / 10 for b in range(11)], dtype=dtype)
    assert bin_index(values, 10).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]
    # 20 right at 0.7 (bin 7: gap 0.3) and 20 wrong at 0.65 (bin 6: gap 0.65): plug-in (0.3 + 0.65) / 2 = 0.475;
    # debiased: every residual in a bin equal, so T = (0.3^2 + 0.65^2) / 2 and the estimate is its root
    probs = torch.tensor([0.7] * 20 + [0.65] * 20, dtype=dtype)
    labels = torch.tensor([1] * 20 + [0] * 20)
    block = evaluate_predictions(probs, labels, resamples=0)
    assert block["conf_ece"] == pytest.approx(0.475, abs=1e-6)
    assert block["conf_ece_debiased"] == pytest.approx(((0.3**2 + 0.65**2) / 2) ** 0.5, abs=1e-6)
