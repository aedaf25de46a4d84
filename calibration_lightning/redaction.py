"""Secrets: which config values are secret, and keeping them out of everything a run writes or prints.

A key is secret when one of its words (in any case style: ``api_key``, ``apiKey``, ``ACCESS-TOKEN``,
``accesstoken``) names a key, token, secret or password; a URL's password (``https://user:PASS@host``) is
secret whatever its key. ``hide_secret_overrides`` moves such values out of the command line into environment
variables before Hydra parses it, so the command line, ``.hydra/``, the log and the W&B run's arguments hold
``${oc.env:CALIBRATION_LIGHTNING_SECRET_N}``; ``scrub`` blanks them in ``config.yaml`` and the W&B config.
Kept free of heavy imports: the command line is scrubbed before anything else loads."""

from __future__ import annotations

import os
import re

SECRET_WORDS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "accesstoken",
        "authtoken",
        "secret",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "privatekey",
    }
)
# The last word says the value only names where the secret is (``api_key_env: OPENAI_API_KEY``).
NOT_SECRET_LAST_WORDS = frozenset({"env", "var", "file", "path", "name"})
REDACTED = "<redacted>"
SECRET_ENV = "CALIBRATION_LIGHTNING_SECRET_"
# scheme://user:password@host: the password part (up to the last "@" before the path).
URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^\s/]*)(?=@[^@/\s]*(?:[/?#]|$))"
)
# Hydra's command-line options that take the next argument as their value.
VALUE_OPTIONS = frozenset(
    {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}
)


def key_words(key: object) -> list[str]:
    """The words of a key's last dotted part, lower case: ``apiKey`` and ``API-KEY`` give ``["api", "key"]``."""
    last = str(key).rsplit(".", 1)[-1]
    last = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", last))
    return [w for w in re.split(r"[^a-z0-9]+", last.lower()) if w]


def is_secret_key(key: object) -> bool:
    """True for a key such as ``api_key``, ``hf_token``, ``accessToken``, ``judge.secret``, ``PASSWORD``; false
    for ``max_new_tokens``, ``api_key_env`` or ``tokenizer``. Only the last dotted part counts."""
    words = key_words(key)
    return bool(words) and words[-1] not in NOT_SECRET_LAST_WORDS and any(w in SECRET_WORDS for w in words)


def has_url_password(text: object) -> bool:
    return isinstance(text, str) and any(m.group("password") for m in URL_PASSWORD.finditer(text))


def scrub_text(text: str) -> str:
    """``text`` with every URL password replaced by ``<redacted>``."""
    return URL_PASSWORD.sub(lambda m: m.group("head") + (REDACTED if m.group("password") else ""), text)


def scrub(node):
    """A copy of a plain dict/list tree with every non-empty secret value replaced by ``<redacted>``, and
    every URL password inside a string."""
    if isinstance(node, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else scrub(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [scrub(v) for v in node]
    return scrub_text(node) if isinstance(node, str) else node


def _unquoted(value: str) -> str:
    """A value the user quoted for Hydra (``'a,b'`` or ``"a,b"``), without its quotes and escapes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def hide_secret_overrides(argv: list[str]) -> list[str]:
    """``argv`` with each secret override's value moved into an environment variable.

    An override is secret when its key is (``is_secret_key``) or its value holds a URL password. The value is
    taken as written (after removing one pair of enclosing quotes), whatever characters it holds (``,`` ``=``
    ``]`` ``'`` included), before Hydra's parser sees it, so no parse error can print it. Digits-only values
    stay numbers (``oc.decode``). Values that already are interpolations (a DDP rank relaunched with the hidden
    command line) are left alone.
    """
    out, takes_value = [], False
    for arg in argv:
        if takes_value or arg.startswith("-") or "=" not in arg:
            takes_value = arg in VALUE_OPTIONS
            out.append(arg)
            continue
        key, value = arg.split("=", 1)
        name = key.lstrip("+~").split("@", 1)[0]
        if not value or "${" in value or not (is_secret_key(name) or has_url_password(value)):
            out.append(arg)
            continue
        value = _unquoted(value)
        var = f"{SECRET_ENV}{sum(k.startswith(SECRET_ENV) for k in os.environ)}"
        os.environ[var] = value
        numeric = re.fullmatch(r"-?\d+", value) is not None
        ref = f"'${{oc.decode:${{oc.env:{var}}}}}'" if numeric else f"'${{oc.env:{var}}}'"
        out.append(f"{key}={ref}")
    return out
