"""The LightningModule: forward to letter logits, call the loss head, update metrics. Nothing else."""

from __future__ import annotations

import contextlib
import random

import lightning as L
import torch
from torch import Tensor

from calibration_lightning.calibration.collection import calibration_metrics
from calibration_lightning.calibration.confidence import letter_probabilities, mask_letter_logits
from calibration_lightning.errors import TrainingError
from calibration_lightning.losses.base import LossHead, StepOutputs
from calibration_lightning.models.scoring import causal_lm_logits
from calibration_lightning.schema import OptimConf


class CalibrationModule(L.LightningModule):
    """A peft-wrapped causal LM (only adapters trainable) with a method's loss head and ``optim`` (both None: it only
    scores); ``letter_ids``: the option letters' token ids.

    Args:
        autocast: run every forward under ``torch.autocast`` in this dtype (``model.lora_compute=bfloat16``:
            LoRA matmuls in bf16 against fp32 master weights); None runs the model in its own dtypes.
        check_finite_every_step: read the loss on the host every step (a device sync); by default it is
            read on logging steps, before every checkpoint and at epoch end, naming the first bad step.
    """

    def __init__(
        self,
        model,
        loss_head: LossHead | None,
        letter_ids: list[int],
        optim: OptimConf | None,
        n_bins: int = 10,
        autocast: torch.dtype | None = None,
        check_finite_every_step: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.loss_head, self.optim = model, loss_head, optim
        self.autocast, self.check_finite_every_step = autocast, check_finite_every_step
        self._first_bad: tuple[Tensor, Tensor] | None = None  # (step, loss) of the first non-finite loss, on device
        self._where: dict[int, tuple[int, int]] = {}  # step -> (epoch, batch) since the last host check
        self.register_buffer("letter_ids", torch.tensor(letter_ids), persistent=False)
        self.val_metrics = calibration_metrics(n_bins).clone(prefix="val/")  # validation during fit
        self.strict_loading = False  # checkpoints hold adapters and loss-head state, not the frozen base

    def forward(self, batch: dict[str, Tensor], full_sequence: bool = False) -> StepOutputs:
        """One pass. Position ids follow the attention mask, so left padding does not shift positions."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if full_sequence:
            ids = torch.cat([ids, batch["answer_token"][:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        compute = contextlib.nullcontext() if self.autocast is None else torch.autocast(ids.device.type, self.autocast)
        keep = 0 if full_sequence else 1
        with compute:
            logits = causal_lm_logits(self.model, ids, mask, logits_to_keep=keep, padded=batch.get("padded"))
        answer_logits = logits[:, -2] if full_sequence else logits[:, -1]
        letter_logits = mask_letter_logits(answer_logits[:, self.letter_ids].float(), batch["n_choices"])
        full = {"token_logits": logits, "token_ids": ids, "token_mask": mask} if full_sequence else {}
        return StepOutputs(answer_logits, letter_logits, torch.softmax(letter_logits, dim=-1), **full)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.loss_head(self(batch, self.loss_head.full_sequence), batch)
        self._record_finite(out.loss.detach(), batch_idx)
        # Values reach the logger only every log_every_n_steps: skipping the bookkeeping in between logs the same,
        # saves Lightning's per-call work on small models and keeps the host from waiting for the GPU.
        if self._trainer is None or self.global_step % self.trainer.log_every_n_steps == 0:
            self.check_finite()
            parts = {"train/loss": out.loss.detach(), **{f"train/loss_{k}": v for k, v in out.parts.items()}}
            self.log_dict(parts, prog_bar=True, batch_size=len(batch["labels"]))
        elif self.check_finite_every_step:
            self.check_finite()
        return out.loss

    def _record_finite(self, loss: Tensor, batch_idx: int) -> None:
        """Keep the step and value of the first non-finite loss on the loss's device (no host sync)."""
        step = self.global_step
        if self._first_bad is None or self._first_bad[0].device != loss.device:
            self._first_bad = (torch.full((), -1, device=loss.device), torch.zeros((), device=loss.device))
        bad_step, bad_loss = self._first_bad
        first = ~torch.isfinite(loss) & (bad_step < 0)
        self._first_bad = (torch.where(first, step, bad_step), torch.where(first, loss.float(), bad_loss))
        self._where[step] = (self.current_epoch, batch_idx)

    def check_finite(self) -> None:
        """Raise TrainingError naming the first step whose loss was non-finite (reads the device once)."""
        if self._first_bad is None:
            return
        step = int(self._first_bad[0])
        if step >= 0:
            epoch, batch_idx = self._where.get(step, (self.current_epoch, -1))
            raise TrainingError(
                f"the training loss became non-finite ({float(self._first_bad[1])}) at step {step} "
                f"(epoch {epoch}, batch {batch_idx}); lower method.optim.lr or check the data. The last "
                "checkpoint and every output already written are intact."
            )
        self._where.clear()

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    def on_train_end(self) -> None:
        self.check_finite()

    # -- evaluation ---------------------------------------------------------------------------
    def _score_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Letter logits and ids of the batch's real questions (DDP padding copies dropped)."""
        with self._fsdp_evaluation():
            letter_logits = self(batch).letter_logits.detach()
        scored = {"letter_logits": letter_logits, **{k: batch[k] for k in ("labels", "n_choices", "index")}}
        return {k: v[batch["keep"]] for k, v in scored.items()}

    def _fsdp_evaluation(self):
        """Autograd on for evaluation forwards under FSDP: its ``use_orig_params`` keeps the parameter views of a
        no-grad forward while parameters stay unsharded (NO_SHARD), so a run that evaluates before ``fit`` would
        train LoRA weights that no longer require grad. Outputs are detached; nothing is kept."""
        from lightning.pytorch.strategies import FSDPStrategy

        fsdp = self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy)
        return torch.enable_grad() if fsdp else contextlib.nullcontext()

    def on_validation_epoch_start(self) -> None:
        self._val_parts: list[dict[str, Tensor]] = []

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        scored = self._score_batch(batch)
        self.val_metrics.update(letter_probabilities(scored["letter_logits"]), scored["labels"], scored["n_choices"])
        self._val_parts.append({k: v.cpu() for k, v in scored.items()})

    def on_validation_epoch_end(self) -> None:
        """Log the round's validation metrics; keep its scores (every process's) as ``val_scored`` (backtracking)."""
        from calibration_lightning.evaluation import gathered

        self.log_dict(self.val_metrics.compute(), prog_bar=False)
        self.val_metrics.reset()
        parts = getattr(self, "_val_parts", [])
        self.val_scored = gathered(self.trainer, parts) if parts else None
        self._val_parts = []

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """The scored tensors of one batch, on the CPU: what ``evaluation.evaluate`` gathers."""
        return {k: v.cpu() for k, v in self._score_batch(batch).items()}

    @torch.no_grad()
    def score(self, loader) -> dict[str, Tensor]:
        """``predict_step`` over ``loader`` (this process's share), in eval mode: for the E-step inside ``fit``,
        where ``trainer.predict`` cannot run."""
        was_training = self.training
        self.eval()
        parts = [self.predict_step(self._to_device(b), 0) for b in loader]
        self.train(was_training)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    # -- optimisation and checkpoints ------------------------------------------------------------
    def configure_optimizers(self):
        """AdamW over the adapters; linear warm-up then cosine decay (or constant), stepped every batch."""
        from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = self.optim.warmup_steps
        warmup = int(self.optim.warmup_ratio * total) if warmup is None else warmup
        if self.optim.scheduler == "constant":
            scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
        else:
            scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep trainable weights and loss-head buffers (never the frozen, possibly 4-bit, base), RNG state and the
        last validation round's scores; never from adapters that a non-finite loss has touched."""
        self.check_finite()
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable or not k.startswith("model.")
        }
        scored = getattr(self, "val_scored", None)
        if scored is not None:  # the last validation round's scores: best.ckpt's are the kept round's
            checkpoint["val_scored"] = {k: v.detach().cpu() for k, v in scored.items()}
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():  # LoRA dropout on a GPU draws from the CUDA generators
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng" in checkpoint:  # LoRA dropout continues with the same draws as an uninterrupted run
            torch.set_rng_state(checkpoint["rng"]["torch"])
            random.setstate(checkpoint["rng"]["python"])
            if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
