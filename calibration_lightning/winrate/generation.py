"""Batched greedy (or sampled) generation with left padding."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from calibration_lightning.data.prompts import chat_text, has_chat_template


def chat_prompt(tokenizer, instruction: str) -> str:
    """The instruction as a user turn in the tokenizer's chat template (plain text if it has none)."""
    if has_chat_template(tokenizer):
        return chat_text(tokenizer, instruction)
    return f"Instruction: {instruction}\nResponse:"


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    instructions: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    greedy: bool = True,
    temperature: float = 0.7,
    desc: str = "generating",
) -> list[str]:
    """One answer per instruction, in input order. Prompts are batched longest first to limit padding."""
    prompts = [chat_prompt(tokenizer, x) for x in instructions]
    special = not has_chat_template(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=special)
        enc = {k: v.to(device) for k, v in enc.items()}
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=temperature if not greedy else None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
        for row, i in enumerate(idx):
            answers[i] = tokenizer.decode(out[row, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    model.train(was_training)
    return answers
