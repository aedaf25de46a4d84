"""Turning a record into the prompt text that ends right before the answer letter."""

from __future__ import annotations

from dataclasses import dataclass

from calibration_lightning.data.records import LETTERS, MCRecord
from calibration_lightning.errors import ConfigError

DEFAULT_TEMPLATE = "The following is a multiple choice question{about}.\n\n{question}\n{choices}\n"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_text(tokenizer, content: str, system_prompt: str | None = None) -> str:
    """``content`` as a user turn (after ``system_prompt`` as a system turn, if given) in the tokenizer's chat
    template, ending where the assistant's reply begins. Holds its special tokens: tokenize it without adding
    the tokenizer's own."""
    messages = [{"role": "user", "content": content}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass(frozen=True)
class PromptFormat:
    """How a record becomes a prompt.

    Attributes:
        template: body with ``{question}``, ``{choices}`` and ``{about}`` (" about SUBJECT" or "").
        choice_format: one option line with ``{letter}`` and ``{text}``.
        answer_cue: text after the body that the answer letter follows ("Answer:", MMLU style).
        answer_prefix: what stands between the cue and the letter (" " gives "Answer: B").
        chat_template: wrap the body as a user turn with the tokenizer's chat template first.
        system_prompt: optional system turn when ``chat_template`` is on.
    """

    template: str = DEFAULT_TEMPLATE
    choice_format: str = "{letter}. {text}"
    answer_cue: str = "Answer:"
    answer_prefix: str = " "
    chat_template: bool = False
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        for key in ("{question}", "{choices}"):
            if key not in self.template:
                raise ConfigError(f"dataset.prompt.template must contain {key}; got {self.template!r}")

    def body(self, record: MCRecord) -> str:
        choices = "\n".join(self.choice_format.format(letter=LETTERS[j], text=t) for j, t in enumerate(record.choices))
        about = f" about {record.subject}" if record.subject else ""
        return self.template.format(question=record.question, choices=choices, about=about)

    def render(self, record: MCRecord, tokenizer=None) -> str:
        """The full prompt text; with ``chat_template`` the tokenizer's template wraps the body."""
        body = self.body(record)
        if not self.chat_template:
            return body + self.answer_cue
        if tokenizer is None or not has_chat_template(tokenizer):
            raise ConfigError(
                "dataset.prompt.chat_template=true, but the tokenizer has no chat template; "
                "set dataset.prompt.chat_template=false"
            )
        return chat_text(tokenizer, body.strip(), self.system_prompt) + self.answer_cue

    @property
    def adds_special_tokens(self) -> bool:
        """Chat-templated text already holds its special tokens; plain text gets the tokenizer's."""
        return not self.chat_template
