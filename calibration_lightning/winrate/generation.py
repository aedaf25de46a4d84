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
def generate_answers(model, tokenizer, instructions: list[str], max_new_tokens: int, batch_size: int, greedy: bool,
                     desc: str) -> list[str]:  # fmt: skip
    """One answer per instruction, in input order (sampled at temperature 0.7 unless ``greedy``). Prompts are
    batched longest first to limit padding."""
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
        sampling = {"do_sample": not greedy, "temperature": 0.7 if not greedy else None, "top_p": None, "top_k": None}
        out = model.generate(**enc, max_new_tokens=max_new_tokens, **sampling, pad_token_id=tokenizer.pad_token_id,
                             use_cache=True)  # fmt: skip
        for row, i in enumerate(idx):
            answers[i] = tokenizer.decode(out[row, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    model.train(was_training)
    return answers
