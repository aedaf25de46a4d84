"""Pairwise judges: given (instruction, answer A, answer B), the probability that A is the better answer."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from calibration_lightning.data.letters import letter_token_ids
from calibration_lightning.data.prompts import has_chat_template
from calibration_lightning.errors import ConfigError, UserError
from calibration_lightning.models.loading import base_model_scoring
from calibration_lightning.winrate.generation import chat_prompt

log = logging.getLogger(__name__)

JUDGE_PROMPT = (
    "You are comparing two responses to the same instruction.\n\n"
    "Instruction:\n{instruction}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "Which response follows the instruction better and is more helpful and correct? "
    "Reply with a single letter: A or B."
)
Triple = tuple[str, str, str]  # instruction, answer shown as A, answer shown as B


def judge_text(triple: Triple, max_chars: int) -> str:
    instruction, a, b = triple
    return JUDGE_PROMPT.format(instruction=instruction, a=a[:max_chars] or "(empty)", b=b[:max_chars] or "(empty)")


class LocalJudge:
    """Any Hugging Face causal LM through our multiple-choice scoring: P("A") from the softmax over the logits of
    "A" and "B" after the judging prompt. ``model``: hub id or local folder; None: the run's own base model with
    its adapters off (judging as before fine-tuning, identically before and after). Answers are cut to
    ``max_answer_chars`` characters."""

    name = "local"

    def __init__(self, model: str | None = None, batch_size: int = 8, max_answer_chars: int = 1500) -> None:
        self.source, self.batch_size, self.max_answer_chars = model, batch_size, max_answer_chars
        self.model = self.tokenizer = None

    def bind(self, run_model, run_tokenizer, device: str, settings=None) -> None:
        """Attach the run's base model, or load the configured one (the run's ``model`` settings, unquantized and
        without adapters)."""
        if self.source is None:
            self.model, self.tokenizer, self.name = run_model, run_tokenizer, "local:self"
            return
        from dataclasses import replace

        from calibration_lightning.models.loading import load_model, load_tokenizer
        from calibration_lightning.models.sources import pretrained

        path, settings = pretrained(self.source), replace(settings, quantize="none", adapter=None)
        self.tokenizer = load_tokenizer(path, settings)
        self.model = load_model(path, settings, device, with_lora=False).eval()
        self.name = f"local:{self.source}"

    @torch.no_grad()
    def prob_first(self, triples: list[Triple]) -> Tensor:
        """P("A") per triple: the run's own letter scoring (``CalibrationModule``) with two options, A and B."""
        from calibration_lightning.module import CalibrationModule

        if self.model is None:
            raise RuntimeError("LocalJudge.bind() must be called before judging")
        prompts = [chat_prompt(self.tokenizer, judge_text(t, self.max_answer_chars)) for t in triples]
        special = not has_chat_template(self.tokenizer)
        letters = letter_token_ids(self.tokenizer, prompts[0], "", 2, add_special_tokens=special)
        device = next(self.model.parameters()).device
        scorer = CalibrationModule(self.model, None, letters, None)
        scorer.letter_ids = scorer.letter_ids.to(device)  # not .to(device): a 4-bit model refuses to move
        out = torch.empty(len(prompts))
        with base_model_scoring(self.model):
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=special)
                batch = {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}
                batch["n_choices"] = torch.full((len(enc["input_ids"]),), 2, device=device)
                out[start : start + len(enc["input_ids"])] = scorer(batch).letter_probs[:, 0].cpu()
        return out


class JudgeError(UserError):
    """The hosted judge refused a request in a way retrying cannot fix (bad model name, key, quota...)."""


@dataclass
class OpenAIJudge:
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI...) as the pairwise judge.

    The key is read from ``$api_key_env`` at each request, never logged or written; ``headers`` (further HTTP
    headers: an endpoint's own key header, an organization) are blanked in written configs as secrets are.
    Timeouts, connection errors, 429 and 5xx are retried ``max_retries`` times, backing off exponentially from
    ``backoff_s``. P("A") comes from the log-probabilities, else from the reply's letter (1, 0; 0.5 if neither).
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 4
    concurrency: int = 8
    backoff_s: float = 1.0
    max_answer_chars: int = 4000
    headers: dict | None = None

    def __post_init__(self) -> None:
        if not self.base_url or not self.model:
            raise ConfigError("judge.base_url and judge.model must be set for judge=openai")
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        self.headers = dict(self.headers or {})
        self.name = f"openai:{self.model}"

    def bind(self, run_model, run_tokenizer, device: str, settings=None) -> None:
        """Nothing to attach: the judge lives behind the endpoint."""

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json", **self.headers}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    detail = e.read()[:300].decode("utf-8", "replace")
                    raise JudgeError(f"judge endpoint {self.url} answered HTTP {e.code}: {detail}") from None
                last = e
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
                last = e
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise JudgeError(
            f"judge endpoint {self.url} failed after {self.max_retries + 1} tries ({type(last).__name__}: {last})"
        )

    def _judge_one(self, triple: Triple) -> float:
        body = {"model": self.model, "temperature": 0, "max_tokens": 1, "logprobs": True, "top_logprobs": 5}
        messages = [{"role": "user", "content": judge_text(triple, self.max_answer_chars)}]
        reply = self._post({**body, "messages": messages})
        choice = reply["choices"][0]
        tops = ((choice.get("logprobs") or {}).get("content") or [{}])[0].get("top_logprobs") or []
        logps = {t["token"].strip().upper(): t["logprob"] for t in tops if t["token"].strip().upper() in ("A", "B")}
        if len(logps) == 2:
            return float(torch.softmax(torch.tensor([logps["A"], logps["B"]]), 0)[0])
        text = (choice.get("message", {}).get("content") or "").strip().upper()
        return 1.0 if text.startswith("A") else 0.0 if text.startswith("B") else 0.5

    def prob_first(self, triples: list[Triple]) -> Tensor:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return torch.tensor(list(pool.map(self._judge_one, triples)))
