"""The win-rate evaluation of a run: generate, judge in both orders against a reference, summarise."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from calibration_lightning.winrate.generation import generate_answers
from calibration_lightning.winrate.scoring import summarize


class WinRate:
    """Before training: answers of the model as loaded; after: answers of the fine-tuned model.

    The reference of an instruction is its given reference, else the model's own answer before training,
    so that the after-training win rate measures exactly what fine-tuning changed (0.5 = unchanged).
    """

    def __init__(
        self,
        instructions: list[tuple[str, str | None]],
        judge,
        max_new_tokens: int = 64,
        batch_size: int = 8,
        greedy: bool = True,
        seed: int = 0,
    ) -> None:
        self.instructions, self.judge = instructions, judge
        self.max_new_tokens, self.batch_size, self.greedy, self.seed = max_new_tokens, batch_size, greedy, seed
        self.references: list[str] | None = None

    @classmethod
    def from_config(cls, cfg, model, tokenizer, device: str) -> WinRate:
        """The win-rate evaluation (``win_rate=on``) with its judge (``judge=local|openai``) bound to this run."""
        from calibration_lightning.schema import build

        judge = build(cfg.judge, "judge")
        judge.bind(model, tokenizer, device, cfg.model)
        wr = cfg.win_rate
        instructions = build(wr.instructions, "win_rate.instructions")
        return cls(instructions, judge, wr.max_new_tokens, wr.batch_size, wr.greedy, cfg.seed)

    def evaluate(self, phase: str, model, tokenizer, generation_context=None) -> tuple[dict, list[dict]]:
        """Generate (inside ``generation_context``, e.g. merged adapters), then judge outside it."""
        prompts = [x for x, _ in self.instructions]
        with generation_context or nullcontext():
            desc = f"win rate: generating ({phase})"
            answers = generate_answers(
                model, tokenizer, prompts, self.max_new_tokens, self.batch_size, self.greedy, desc
            )
        if self.references is None:
            self.references = [ref if ref is not None else ans for (_, ref), ans in zip(self.instructions, answers)]
        identical = torch.tensor([a.strip() == r.strip() for a, r in zip(answers, self.references)])
        todo = [i for i in range(len(prompts)) if not identical[i]]
        p_cand_first, p_cand_second = torch.full((len(prompts),), 0.5), torch.full((len(prompts),), 0.5)
        if todo:
            first = self.judge.prob_first([(prompts[i], answers[i], self.references[i]) for i in todo])
            second = self.judge.prob_first([(prompts[i], self.references[i], answers[i]) for i in todo])
            p_cand_first[todo], p_cand_second[todo] = first, second
        summary = summarize(p_cand_first, p_cand_second, identical, self.judge.name, self.seed)
        rows = [
            {
                "instruction": prompts[i],
                "reference": self.references[i],
                "answer": answers[i],
                "identical": bool(identical[i]),
                "p_answer_first_wins": round(float(p_cand_first[i]), 6),
                "p_reference_first_wins": round(float(p_cand_second[i]), 6),
            }
            for i in range(len(prompts))
        ]
        return summary, rows
