"""RCFT targets, the ECE regularizer, the E-step statistics, and temperature fitting."""

import math

import pytest
import torch

from calibration_lightning import fit_temperature, rank_preserving_targets
from calibration_lightning.calibration.metrics import bin_statistics
from calibration_lightning.losses.ece import ece_regularizer


def _by_formula(p, a):
    """PAPER.md's mapping for one row, written with scalars."""
    k = len(p)
    m = max(range(k), key=lambda j: p[j])
    others = [j for j in range(k) if j != m]
    q2 = max(p[j] for j in others)
    if a >= 1:
        return [1.0 if j == m else 0.0 for j in range(k)]
    g = math.log(k - 1) / (q2 * (1 - a))
    denom = (k - 1) + sum(math.tanh(g * p[j]) for j in others)
    return [a if j == m else (1 - a) * (1 + math.tanh(g * p[j])) / denom for j in range(k)]


def test_targets_k4_by_hand():
    p = [0.5, 0.3, 0.15, 0.05]
    t = rank_preserving_targets(torch.tensor([p], dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64))[0]
    # g = ln 3 / (0.3 * 0.4) = 9.1551; tanh(g * .3) = .99179, tanh(g * .15) = .87945, tanh(g * .05) = .42839
    # denominator 3 + 2.29963 = 5.29963; t_B = .4 * 1.99179 / 5.29963 = .15033
    assert t[0].item() == pytest.approx(0.6)
    assert t[1].item() == pytest.approx(
        0.4
        * (1 + math.tanh(9.155102 * 0.3))
        / (3 + math.tanh(9.155102 * 0.3) + math.tanh(9.155102 * 0.15) + math.tanh(9.155102 * 0.05)),
        abs=1e-5,
    )
    assert t[1].item() == pytest.approx(0.15033, abs=1e-4)
    assert t.tolist() == pytest.approx(_by_formula(p, 0.6), abs=1e-9)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_targets_other_k_sum_and_order(k):
    g = torch.Generator().manual_seed(k)
    probs = torch.softmax(torch.randn(50, k, generator=g, dtype=torch.float64) * 2, dim=-1)
    acc = torch.rand(50, generator=g, dtype=torch.float64) * 0.9
    t = rank_preserving_targets(probs, acc)
    assert torch.allclose(t.sum(dim=1), torch.ones(50, dtype=torch.float64))
    for row_p, row_t, a in zip(probs, t, acc):
        assert row_t.tolist() == pytest.approx(_by_formula(row_p.tolist(), a.item()), abs=1e-9)
        top = int(row_p.argmax())
        others = [j for j in range(k) if j != top]
        order_p = sorted(others, key=lambda j: row_p[j].item())
        assert [row_t[j].item() for j in order_p] == sorted(row_t[j].item() for j in others)


def test_targets_bin_accuracy_one_and_detached():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0]], requires_grad=True)
    t = rank_preserving_targets(probs, torch.tensor([1.0]))
    assert t.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert not t.requires_grad


def test_targets_respect_fewer_choices():
    probs = torch.tensor([[0.6, 0.3, 0.1, 0.0]], dtype=torch.float64)
    t = rank_preserving_targets(probs, torch.tensor([0.5], dtype=torch.float64), n_choices=torch.tensor([3]))
    assert t[0, 3].item() == 0.0
    assert t[0].tolist()[:3] == pytest.approx(_by_formula([0.6, 0.3, 0.1], 0.5), abs=1e-9)


def test_ece_regularizer_by_hand():
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.45, 0.35, 0.15, 0.05]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.5, 0.2, 0.05]])
    sample_bin = torch.tensor([7, 4])
    count = torch.zeros(10)
    count[7], count[4] = 4, 10
    # row 0: (.3^2 + 3 * .1^2) / 4 = .12 / 4 ; row 1: (.2^2 + .15^2 + .05^2 + 0) / 10 = .065 / 10
    assert ece_regularizer(probs, targets, sample_bin, count).item() == pytest.approx(0.03 + 0.0065, abs=1e-6)
    count[4] = 0  # a bin that was empty at the E-step contributes nothing
    assert ece_regularizer(probs, targets, sample_bin, count).item() == pytest.approx(0.03, abs=1e-6)


def test_bin_statistics_by_hand():
    probs = torch.tensor([[0.95, 0.05], [0.91, 0.09], [0.35, 0.65], [0.62, 0.38], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    acc, count = bin_statistics(probs, labels, 10)
    assert count.tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 3]
    assert acc[9].item() == pytest.approx(2 / 3)
    assert acc[6].item() == pytest.approx(0.5)
    assert acc[0].item() == 0.0


@pytest.mark.parametrize("true_t", [0.5, 2.0, 3.5])
def test_fit_temperature_recovers_generating_temperature(true_t):
    g = torch.Generator().manual_seed(int(true_t * 10))
    logits = torch.randn(20000, 4, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits / true_t, dim=-1), 1, generator=g).squeeze(1)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)


def test_fit_temperature_never_worse_than_one_and_handles_absent_options():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 5, generator=g)
    logits[:100, 4] = float("-inf")  # rows with four options
    labels = torch.randint(0, 4, (500,), generator=g)
    t = fit_temperature(logits, labels)
    nll = lambda temp: torch.nn.functional.cross_entropy(logits / temp, labels).item()  # noqa: E731
    assert math.isfinite(t) and nll(t) <= nll(1.0) + 1e-9
