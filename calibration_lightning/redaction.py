"""Which config values are secrets: those whose key names a key, token, secret or password.

Used for everything a run writes (``config.yaml``, Hydra's ``.hydra/``, the W&B run's config and arguments).
Kept free of heavy imports: the command line is scrubbed before anything else loads."""

from __future__ import annotations

import re

SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"})
# The last word says the value only names where the secret is (``api_key_env: OPENAI_API_KEY``).
NOT_SECRET_LAST_WORDS = frozenset({"env", "var", "file", "path", "name"})
REDACTED = "<redacted>"


def is_secret_key(key: object) -> bool:
    """True for a key such as ``api_key``, ``hf_token``, ``judge.secret``, ``password``; false for
    ``max_new_tokens``, ``api_key_env`` or ``tokenizer``. Only the last dotted part counts."""
    words = [w for w in re.split(r"[^a-z0-9]+", str(key).lower().rsplit(".", 1)[-1]) if w]
    return bool(words) and words[-1] not in NOT_SECRET_LAST_WORDS and any(w in SECRET_WORDS for w in words)


def scrub(node):
    """A copy of a plain dict/list tree with every non-empty secret value replaced by ``<redacted>``."""
    if isinstance(node, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else scrub(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [scrub(v) for v in node]
    return node
