"""Turning a record into the prompt text that ends right before the answer letter."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from calibration_lightning.data.records import LETTERS, MCRecord
from calibration_lightning.errors import ConfigError, Section, require


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


def _formats(pattern: str, **fields: str) -> bool:
    """Whether ``pattern.format(**fields)`` works: every ``{name}`` is one of ``fields``, braces are balanced."""
    try:
        pattern.format(**fields)
    except (KeyError, IndexError, ValueError):
        return False
    return True


@dataclass
class PromptFormat(Section):
    """``dataset.prompt``: how a record becomes a prompt (its defaults: conf/_base/dataset.yaml).

    Attributes:
        template: body with ``{question}``, ``{choices}`` and ``{about}`` (" about SUBJECT" or "").
        choice_format: one option line with ``{letter}`` and ``{text}``.
        answer_cue: text after the body that the answer letter follows ("Answer:", MMLU style).
        answer_prefix: what stands between the cue and the letter (" " gives "Answer: B").
        chat_template: wrap the body as a user turn with the tokenizer's chat template first.
        system_prompt: optional system turn when ``chat_template`` is on.
    """

    template: str = MISSING
    choice_format: str = MISSING
    answer_cue: str = MISSING
    answer_prefix: str = MISSING
    chat_template: bool = MISSING
    system_prompt: str | None = None

    def check(self) -> None:
        t, c = self.template, self.choice_format
        ok = "{question}" in t and "{choices}" in t and _formats(t, question="", choices="", about="")
        must = "must contain {question} and {choices} (and may {about}), nothing else"
        require("dataset.prompt.template", t, ok, must)
        ok = "{letter}" in c and "{text}" in c and _formats(c, letter="", text="")
        require("dataset.prompt.choice_format", c, ok, "must contain {letter} and {text}, nothing else")

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
