"""The option letters' token ids, checked in the prompt's own context."""

from __future__ import annotations

from calibration_lightning.data.records import LETTERS
from calibration_lightning.errors import TokenizerError


def letter_token_ids(tokenizer, prompt: str, answer_prefix: str, k: int, add_special_tokens: bool = True) -> list[int]:
    """Token id of each of the first ``k`` letters as it follows ``prompt`` + ``answer_prefix``: each completion
    must add exactly one token and leave the prompt's tokens unchanged, otherwise reading that letter's logit at
    the last prompt position would be wrong (a TokenizerError says how the letter tokenized and what to change)."""
    base = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    ids = []
    for letter in LETTERS[:k]:
        full = tokenizer(prompt + answer_prefix + letter, add_special_tokens=add_special_tokens)["input_ids"]
        extra = full[len(base) :]
        if full[: len(base)] != base or len(extra) != 1:
            pieces = tokenizer.convert_ids_to_tokens(full[max(0, len(base) - 2) :])
            raise TokenizerError(
                f"option letter {letter!r} is not a single token after the prompt's end "
                f"{prompt[-20:]!r} + {answer_prefix!r} with this tokenizer (it tokenizes as {pieces}). "
                "Change dataset.prompt.answer_prefix (e.g. ' ' vs '') or dataset.prompt.answer_cue so that "
                "each letter is one token there."
            )
        ids.append(extra[0])
    if len(set(ids)) != len(ids):
        raise TokenizerError(f"option letters map to repeated token ids {ids}; the tokenizer cannot tell them apart")
    return ids
