"""RCFT: an SFT loss plus the EM-estimated ECE regularizer (PAPER.md)."""

from __future__ import annotations

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index
from calibration_lightning.calibration.targets import rank_preserving_targets
from calibration_lightning.errors import is_number, require
from calibration_lightning.losses.base import LossHead, LossOutput, StepOutputs


def ece_regularizer(probs: Tensor, targets: Tensor, sample_bin: Tensor, bin_count: Tensor) -> Tensor:
    """L_ECE = sum_b (1 / N_b) * sum_{i in batch, bin b} ||p_i - t_i||^2, ``bin_count`` N_b from the E-step:
    samples in a bin that was empty there add nothing."""
    squared = ((probs - targets) ** 2).sum(dim=1)
    n_b = bin_count[sample_bin]
    weight = torch.where(n_b > 0, 1.0 / n_b.clamp_min(1), torch.zeros_like(n_b))
    return (weight * squared).sum()


class ECERegularizedSFT(LossHead):
    """L = L_SFT + lambda * L_ECE, with targets from bin accuracies of the last E-step.

    A sample's bin is that of its current confidence; its targets are
    ``rank_preserving_targets(p, a_b)``, detached (the authors' code lets gradient flow into them;
    we treat them as constants, as the EM derivation does). The bin statistics are buffers, so
    they travel in checkpoints; ``EStepRefresh`` fills them. ``sft``: ``SequenceSFT`` (L_SFT2, the paper) or
    ``CompletionSFT`` (the authors' code).
    """

    def __init__(self, sft: LossHead, lam: float = 1.0, n_bins: int = 10) -> None:
        super().__init__()
        require("method.loss.lam", lam, is_number(lam) and lam >= 0, "must be >= 0")
        require("method.loss.n_bins", n_bins, isinstance(n_bins, int) and n_bins >= 2, "must be an integer >= 2")
        self.sft, self.lam, self.n_bins = sft, lam, n_bins
        self.full_sequence = sft.full_sequence
        self.register_buffer("bin_accuracy", torch.zeros(n_bins))
        self.register_buffer("bin_count", torch.zeros(n_bins))
        self.register_buffer("estep_epoch", torch.tensor(-1))
        self.register_buffer("estep_step", torch.tensor(-1))
        # Host copies of the E-step state, so the training step and the callback never read the device.
        self.fitted, self.last_estep = False, (-1, -1)

    def set_bin_statistics(self, accuracy: Tensor, count: Tensor, epoch: int, step: int) -> None:
        """Store an E-step's bin accuracies ``[n_bins]`` and counts ``[n_bins]``, made at ``(epoch, step)``."""
        self.bin_accuracy.copy_(accuracy)
        self.bin_count.copy_(count)
        self.estep_epoch.fill_(epoch)
        self.estep_step.fill_(step)
        self.fitted, self.last_estep = bool(count.sum() > 0), (epoch, step)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "bin_count" in state_dict:  # checkpoints are read on the host: no device wait
            self.fitted = bool(state_dict[prefix + "bin_count"].sum() > 0)
            self.last_estep = (int(state_dict[prefix + "estep_epoch"]), int(state_dict[prefix + "estep_step"]))

    def forward(self, out: StepOutputs, batch: dict[str, Tensor]) -> LossOutput:
        if not self.fitted:
            raise RuntimeError(
                "ECERegularizedSFT needs bin statistics: add the EStepRefresh callback (method.callbacks)"
            )
        sft = self.sft(out, batch)
        probs = out.letter_probs
        sample_bin = bin_index(probs.detach().max(dim=1).values, self.n_bins)
        targets = rank_preserving_targets(probs, self.bin_accuracy[sample_bin], batch["n_choices"])
        ece = ece_regularizer(probs, targets, sample_bin, self.bin_count)
        return LossOutput(sft.loss + self.lam * ece, {"sft": sft.loss.detach(), "ece": ece.detach()})
