"""LightningDataModule: multiple-choice records -> left-padded token batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from calibration_lightning.data.letters import letter_token_ids
from calibration_lightning.data.records import LETTERS, MCRecord
from calibration_lightning.data.sampling import LengthGroupedBatchSampler, LengthSortedBatches
from calibration_lightning.data.splits import Splits

if TYPE_CHECKING:
    from calibration_lightning.schema import DatasetConf

log = logging.getLogger(__name__)

TRUNCATED_PARTS = ("question", "gold_option", "answer_cue")


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    label: int
    n_choices: int
    index: int
    keep: bool = True  # False for a copy that pads a rank's share (scored, then dropped)


class EncodedSplit(Dataset):
    def __init__(self, examples: list[Encoded]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Encoded:
        return self.examples[i]


def _own_generator() -> torch.Generator:
    """Each ``iter(DataLoader)`` draws a seed from its generator; a private one leaves the global RNG
    (LoRA dropout) untouched, so a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(0)


class MultipleChoiceDataModule(L.LightningDataModule):
    """Tokenizes every split once and serves length-grouped, left-padded batches.

    A batch holds ``input_ids [B, T]`` and ``attention_mask [B, T]`` (left padding, so the
    last position is every row's last prompt token), ``labels [B]`` (gold option index),
    ``answer_token [B]`` (gold letter's token id), ``n_choices [B]``, ``index [B]``
    (row position in its split), ``keep [B]`` (False for padding copies in a DDP share) and ``padded``
    (a Python bool: whether any row is left-padded, known here so the step need not ask the device).
    ``eval_sets`` are extra named test sets, evaluated after ``test``; prompts longer than
    ``dataset.max_length`` keep their last ``max_length`` tokens.
    """

    def __init__(
        self, splits: Splits, tokenizer, dataset: DatasetConf, seed: int = 0, eval_sets: dict | None = None
    ) -> None:
        super().__init__()
        self.splits, self.tokenizer, self.prompt, self.seed = splits, tokenizer, dataset.prompt, seed
        self.batch_size, self.eval_batch_size = dataset.batch_size, dataset.eval_batch_size
        self.max_length, self.eval_tokens_per_batch = dataset.max_length, dataset.eval_tokens_per_batch
        self.records: dict[str, list[MCRecord]] = {"train": splits.train, "val": splits.val, "test": splits.test}
        self.records.update(eval_sets or {})
        all_records = [r for rs in self.records.values() for r in rs]
        self.k_max = max(len(r.choices) for r in all_records)
        first = next(r for r in all_records)
        self.letter_ids = letter_token_ids(
            tokenizer, self.prompt.render(first, tokenizer), self.prompt.answer_prefix, self.k_max,
            self.prompt.adds_special_tokens,
        )  # fmt: skip
        self.encoded: dict[str, EncodedSplit] = {}
        # per split whose prompts were cut to max_length: rows, rows_cut and, per part, how many rows lost it
        self.truncation: dict[str, dict[str, int]] = {}
        self.train_sampler: LengthGroupedBatchSampler | None = None
        self.round_batches = 0  # training batches between validations (0: a pass); set by each method's training
        self.score_val = True  # False: predict scores the test sets only (the kept round's val scores are known)
        self.score_tests = True  # False: predict scores no test set (method=auto's candidates)

    def longest(self, split: str) -> int:
        """Token length of the longest prompt of ``split`` (0 if the split is empty)."""
        self.setup()
        return max((len(e.input_ids) for e in self.encoded[split].examples), default=0) if split in self.encoded else 0

    @property
    def eval_set_names(self) -> list[str]:
        """``test`` followed by the extra evaluation sets, in test-dataloader order."""
        return ["test"] + [n for n in self.records if n not in ("train", "val", "test")]

    def encode(self, records: list[MCRecord], name: str) -> EncodedSplit:
        texts = [self.prompt.render(r, self.tokenizer) for r in records]
        fast = getattr(self.tokenizer, "is_fast", False)
        enc = self.tokenizer(texts, add_special_tokens=self.prompt.adds_special_tokens, return_offsets_mapping=fast)
        ids = enc["input_ids"]
        cut = [i for i, x in enumerate(ids) if len(x) > self.max_length]
        if cut:
            report = {"rows": len(ids), "rows_cut": len(cut)}
            if fast:
                lost = [self._lost(records[i], texts[i], enc["offset_mapping"][i]) for i in cut]
                report.update({f"{part}_cut": sum(part in parts for parts in lost) for part in TRUNCATED_PARTS})
            self.truncation[name] = report
            log.warning(
                "%s: %d of %d prompts are longer than dataset.max_length=%d and keep only their last tokens%s",
                name,
                len(cut),
                len(ids),
                self.max_length,
                "".join(f"; {n} lost {p.replace('_', ' ')}" for p in TRUNCATED_PARTS if (n := report.get(f"{p}_cut"))),
            )
        return EncodedSplit(
            [Encoded(x[-self.max_length :], r.answer, len(r.choices), i) for i, (x, r) in enumerate(zip(ids, records))]
        )

    def _lost(self, record: MCRecord, text: str, offsets) -> set[str]:
        """Which parts of a cut prompt (``TRUNCATED_PARTS``) start before its first kept character."""
        kept_from = offsets[-self.max_length][0]
        question_at = text.find(record.question)
        gold = self.prompt.choice_format.format(letter=LETTERS[record.answer], text=record.choices[record.answer])
        starts = {
            "question": question_at,
            "gold_option": text.find(gold, max(question_at, 0) + len(record.question)),
            "answer_cue": text.rfind(self.prompt.answer_cue) if self.prompt.answer_cue else -1,
        }
        return {part for part, at in starts.items() if 0 <= at < kept_from}

    def setup(self, stage: str | None = None) -> None:
        for name, records in self.records.items():
            if name not in self.encoded and records:
                self.encoded[name] = self.encode(records, name)

    def collate(self, examples: list[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in examples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            input_ids[row, width - len(e.input_ids) :] = torch.tensor(e.input_ids)
            mask[row, width - len(e.input_ids) :] = 1
        labels = torch.tensor([e.label for e in examples])
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": labels,
            "answer_token": torch.tensor(self.letter_ids)[labels],
            "n_choices": torch.tensor([e.n_choices for e in examples]),
            "index": torch.tensor([e.index for e in examples]),
            "keep": torch.tensor([e.keep for e in examples]),
            "padded": any(len(e.input_ids) < width for e in examples),
        }

    def transfer_batch_to_device(self, batch: dict[str, torch.Tensor], device, dataloader_idx: int) -> dict:
        """Batches are flat dicts of tensors: move them directly (Lightning's generic walk costs ms a step)."""
        return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def split_dataloader(self, name: str) -> DataLoader:
        """Scoring loader over one split in length order, this process's share under DDP: samples are dealt
        round-robin; shorter shares are padded with ``keep=False`` copies so every rank runs as many batches."""
        self.setup()
        examples = self.encoded[name].examples
        rank, world = self._rank_world()
        order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
        share = [examples[i] for i in order[rank::world]]
        per_rank = -(-len(examples) // world)
        share += [replace(examples[order[0]], keep=False)] * (per_rank - len(share))
        # Under a token budget every rank cuts its batches where the longest share needs them, so all
        # ranks run the same number of batches (the gathers of DDP scoring wait for each other).
        longest = len(examples[order[0]].input_ids)
        shares = [[len(examples[i].input_ids) for i in order[r::world]] for r in range(world)]
        shares = [sorted(x + [longest] * (per_rank - len(x)), reverse=True) for x in shares]
        reference = [max(col) for col in zip(*shares)]
        batches = LengthSortedBatches(
            [len(e.input_ids) for e in share], self.eval_batch_size, self.eval_tokens_per_batch, reference
        )
        return DataLoader(
            EncodedSplit(share), batch_sampler=batches, collate_fn=self.collate, generator=_own_generator()
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        data = self.encoded["train"]
        rank, world = self._rank_world()
        if self.train_sampler is None:
            self.train_sampler = LengthGroupedBatchSampler(
                [len(e.input_ids) for e in data.examples],
                self.batch_size,
                self.seed,
                rank=rank,
                world_size=world,
                epoch_source=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            )
        self.train_sampler.round_batches = self.round_batches
        return DataLoader(data, batch_sampler=self.train_sampler, collate_fn=self.collate, generator=_own_generator())

    def val_dataloader(self) -> DataLoader | list:
        return self.split_dataloader("val") if self.records["val"] else []  # no val split: no validation

    @property
    def predict_split_names(self) -> list[str]:
        """The splits ``predict_dataloader`` scores, in order: val (when there is one and ``score_val``), then
        every test set (when ``score_tests``)."""
        return (["val"] if self.records["val"] and self.score_val else []) + (
            self.eval_set_names if self.score_tests else []
        )

    def predict_dataloader(self) -> list[DataLoader]:
        return [self.split_dataloader(name) for name in self.predict_split_names]

    def state_dict(self) -> dict:
        """The data position saved in checkpoints: epoch and batches trained in it (Lightning's own count)."""
        if self.trainer is None or not self.trainer.training:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" in state:
            self.train_dataloader()
            self.train_sampler.resume_at(int(state["epoch"]), int(state["batches_done"]))
