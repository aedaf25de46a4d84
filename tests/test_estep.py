"""RCFT's E-step (``EStepRefresh``) under a real Trainer: when it refreshes (every epoch, once, every N steps)
and that the bin statistics it sets are the training split's, counted by hand."""

import lightning as L
import pytest
import torch

from calibration_lightning.errors import ConfigError
from calibration_lightning.losses.ece import ECERegularizedSFT
from calibration_lightning.losses.em import EStepRefresh
from calibration_lightning.losses.sft import SequenceSFT
from calibration_lightning.module import CalibrationModule
from tests.conftest import optim


class SeenAtBatchStart(L.Callback):
    """(global step, the step and epoch of the E-step in effect) at the start of every training batch."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        head = module.loss_head
        self.seen.append((trainer.global_step, int(head.estep_step), int(head.estep_epoch)))


def _fit(tiny_model, tiny_datamodule, every, epochs=2):
    module = CalibrationModule(
        tiny_model, ECERegularizedSFT(SequenceSFT(), n_bins=5), tiny_datamodule.letter_ids, optim(lr=1e-3)
    )
    seen = SeenAtBatchStart()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[EStepRefresh(every), seen],  # the E-step first: the recorder sees what the batch trains with
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    tiny_model.train()
    trainer.fit(module, datamodule=tiny_datamodule)
    return module, seen.seen


def test_refresh_every_epoch_once_and_every_n_steps(tiny_model, tiny_datamodule):
    # 24 training questions, batch 4: steps 0-5 in epoch 0, 6-11 in epoch 1
    _, seen = _fit(tiny_model, tiny_datamodule, "epoch")
    assert seen == [(s, 0 if s < 6 else 6, 0 if s < 6 else 1) for s in range(12)]
    _, seen = _fit(tiny_model, tiny_datamodule, "once")
    assert seen == [(s, 0, 0) for s in range(12)]
    _, seen = _fit(tiny_model, tiny_datamodule, 4)  # before training, then at steps 4 and 8
    assert seen == [(s, s - s % 4, 0 if s < 8 else 1) for s in range(12)]


def test_statistics_are_the_training_splits_counted_by_hand(tiny_model, tiny_datamodule):
    """With ``once``, the head keeps what the E-step measured before the first step: per confidence bin of
    width 0.2, the share of right answers among the training questions, and their number."""
    scorer = CalibrationModule(tiny_model, None, tiny_datamodule.letter_ids, None)
    before = scorer.score(tiny_datamodule.split_dataloader("train"))  # the model as training starts
    k = before["n_choices"][:, None] > torch.arange(before["letter_logits"].shape[1])[None]
    probs = before["letter_logits"].masked_fill(~k, float("-inf")).softmax(-1)
    accuracy, count = [0.0] * 5, [0] * 5
    for p, y in zip(probs.tolist(), before["labels"].tolist()):
        b = min(int(max(p) / 0.2), 4)
        count[b] += 1
        accuracy[b] += p.index(max(p)) == y
    module, _ = _fit(tiny_model, tiny_datamodule, "once", epochs=1)
    head = module.loss_head
    assert head.bin_count.tolist() == count and sum(count) == 24
    expected = [a / c if c else 0.0 for a, c in zip(accuracy, count)]
    assert head.bin_accuracy.tolist() == pytest.approx(expected)


@pytest.mark.parametrize("every", [0, -2, "daily", 1.5])
def test_bad_schedules_are_named(every):
    with pytest.raises(ConfigError, match="EStepRefresh.every"):
        EStepRefresh(every)
