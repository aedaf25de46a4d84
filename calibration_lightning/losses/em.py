"""The E-step of RCFT as a Lightning callback: re-estimate bin accuracies on the training split."""

from __future__ import annotations

import lightning as L

from calibration_lightning.calibration.confidence import letter_probabilities
from calibration_lightning.calibration.metrics import bin_statistics
from calibration_lightning.errors import require


class EStepRefresh(L.Callback):
    """Run the current model over the training split and refresh the loss head's bin statistics.

    Args:
        every: ``"epoch"`` (default; the paper's alternating EM: once per pass over the training split, also when
            ``method.select.every_n_steps`` validates several times a pass), ``"once"`` (before training only,
            as the authors' code does) or an integer N (every N optimizer steps, and before training).
    """

    def __init__(self, every: str | int = "epoch") -> None:
        ok = every in ("epoch", "once") or (isinstance(every, int) and not isinstance(every, bool) and every >= 1)
        require("method.callbacks EStepRefresh.every", every, ok, "allowed: epoch, once, or an integer >= 1")
        self.every = every

    def _refresh(self, trainer: L.Trainer, module) -> None:
        head = module.loss_head
        scored = module.score(trainer.datamodule.split_dataloader("train"))
        probs = letter_probabilities(scored["letter_logits"], scored["n_choices"])
        acc, count = bin_statistics(probs, scored["labels"], head.n_bins)
        # Collectives run on the module's device: NCCL cannot all-reduce CPU tensors.
        hits = trainer.strategy.reduce((acc * count).to(module.device), reduce_op="sum")
        count = trainer.strategy.reduce(count.to(module.device), reduce_op="sum")
        acc = hits / count.clamp_min(1)
        head.set_bin_statistics(
            acc.to(head.bin_accuracy), count.to(head.bin_count), trainer.current_epoch, trainer.global_step
        )
        module.log_dict({f"em/bin_acc_{b}": float(a) for b, a in enumerate(acc) if count[b] > 0}, rank_zero_only=True)

    @staticmethod
    def _pass(trainer: L.Trainer, epoch: int) -> int:
        """The pass over the training split that Lightning epoch ``epoch`` belongs to (validation rounds of
        ``method.select.every_n_steps`` make several Lightning epochs of one pass)."""
        sampler = getattr(getattr(trainer, "datamodule", None), "train_sampler", None)
        return epoch // (sampler.rounds_per_pass if sampler is not None else 1)

    def on_train_epoch_start(self, trainer: L.Trainer, module) -> None:
        head = module.loss_head
        passes = self._pass(trainer, head.last_estep[0]), self._pass(trainer, trainer.current_epoch)
        stale = self.every == "epoch" and passes[0] != passes[1]
        if not head.fitted or stale:
            self._refresh(trainer, module)

    def on_train_batch_start(self, trainer: L.Trainer, module, batch, batch_idx: int) -> None:
        if not isinstance(self.every, int):
            return
        step = trainer.global_step
        if step > 0 and step % self.every == 0 and module.loss_head.last_estep[1] != step:
            self._refresh(trainer, module)  # module.score runs under no_grad
