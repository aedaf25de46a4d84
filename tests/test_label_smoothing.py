"""LabelSmoothedAnswerCE against PyTorch's own label smoothing (``F.cross_entropy(label_smoothing=)``)."""

import pytest
import torch
import torch.nn.functional as F

from calibration_lightning.errors import ConfigError
from calibration_lightning.losses.base import StepOutputs
from calibration_lightning.losses.label_smoothing import LabelSmoothedAnswerCE


def _outputs(letter_logits, answer_logits=None):
    answer_logits = torch.zeros(len(letter_logits), 7) if answer_logits is None else answer_logits
    return StepOutputs(answer_logits, letter_logits, torch.softmax(letter_logits, -1))


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_letters_equal_cross_entropy_with_label_smoothing_over_each_rows_options(epsilon):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g) * 3
    n_choices = torch.tensor([5, 5, 4, 2, 3, 5])
    labels = torch.tensor([0, 4, 3, 1, 2, 2])
    masked = logits.masked_fill(torch.arange(5)[None] >= n_choices[:, None], float("-inf"))
    batch = {"labels": labels, "n_choices": n_choices}
    loss = LabelSmoothedAnswerCE(epsilon).forward(_outputs(masked), batch).loss
    # the reference: each row a K-way problem over its own options, smoothed by PyTorch
    rows = [
        F.cross_entropy(logits[i, :k][None], labels[i][None], label_smoothing=epsilon)
        for i, k in enumerate(n_choices.tolist())
    ]
    assert loss.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-6)
    full = n_choices == 5  # rows with every option: one batched call agrees as well
    batched = F.cross_entropy(logits[full], labels[full], label_smoothing=epsilon)
    only_full = {"labels": labels[full], "n_choices": n_choices[full]}
    assert LabelSmoothedAnswerCE(epsilon).forward(_outputs(masked[full]), only_full).loss.item() == pytest.approx(
        batched.item(), rel=1e-6
    )


def test_vocab_smooths_over_the_whole_vocabulary():
    g = torch.Generator().manual_seed(1)
    answer_logits = torch.randn(4, 11, generator=g)
    answer_token = torch.tensor([3, 0, 10, 7])
    batch = {"answer_token": answer_token, "labels": torch.zeros(4, dtype=torch.long), "n_choices": torch.full((4,), 2)}
    loss = LabelSmoothedAnswerCE(0.2, over="vocab").forward(_outputs(torch.zeros(4, 2), answer_logits), batch).loss
    logp = answer_logits.log_softmax(-1)
    by_hand = (0.8 * -logp[torch.arange(4), answer_token] + 0.2 * -logp.mean(-1)).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_smoothing_lowers_the_target_confidence():
    """The loss is lowest where the gold letter gets 1 - epsilon + epsilon / K, not 1."""
    head = LabelSmoothedAnswerCE(0.3)
    batch = {"labels": torch.tensor([0]), "n_choices": torch.tensor([4])}
    target = 1 - 0.3 + 0.3 / 4
    best = torch.tensor([[target, *(3 * [(1 - target) / 3])]]).log()
    sharper = torch.tensor([[0.99, 0.01 / 3, 0.01 / 3, 0.01 / 3]]).log()
    assert head.forward(_outputs(best), batch).loss < head.forward(_outputs(sharper), batch).loss


@pytest.mark.parametrize("kwargs", [{"epsilon": 1.0}, {"epsilon": -0.1}, {"over": "tokens"}])
def test_out_of_range_settings_are_named(kwargs):
    with pytest.raises(ConfigError, match="method.loss."):
        LabelSmoothedAnswerCE(**kwargs)
