"""Secrets: which config values are secret (docs/resume.md), and keeping them out of everything a run writes or prints.

``hide_secret_overrides`` moves them off the command line into environment variables before Hydra parses it,
``scrub`` blanks them in written configs, ``redact`` takes them out of an error line. Kept free of heavy imports:
the command line is scrubbed before anything else loads."""

from __future__ import annotations

import itertools
import os
import re

# Found anywhere in a key once its case and separators are gone, so every case style, compound and plural
# counts (``passWord``, ``PassPhrase``, ``api_keys``, ``wandbapikey``, ``X-Api-Key``); none is an ordinary word.
SECRET_STEMS = (
    "password", "passwd", "passphrase", "secret", "apikey", "accesskey", "privatekey", "credential",
    "authorization", "accesstoken", "authtoken",
)  # fmt: skip
SECRET_WORDS = frozenset({"auth", "oauth", "pwd"})  # secret as a whole word anywhere (``basic_auth``)
# Secret as the key's last word only: elsewhere, or inside a longer word, they are ordinary (``tokens_per_batch``,
# ``pass_rate``, ``passes``, ``bypass``, ``monkey``, ``keep``, ``tokenizer``).
SECRET_LAST_WORDS = frozenset({"pass", "token", "tokens", "key", "keys"})
# A token that is a piece of text, not a credential, when the word before names which or how many.
TEXT_TOKEN_WORDS = frozenset(
    {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "max", "min", "new", "num", "n", "special", "added", "stop",
     "start", "end", "total", "extra", "vocab", "image", "per"}
)  # fmt: skip
# The last word says the value only names where the secret is (``api_key_env: OPENAI_API_KEY``).
NOT_SECRET_LAST_WORDS = frozenset({"env", "var", "file", "path", "name", "dir"})
REDACTED = "<redacted>"
SECRET_ENV = "CALIBRATION_LIGHTNING_SECRET_"
# scheme://user:password@host: the password runs to the last "@" of the word, so it may hold any character
# ("/", "@", ":", "%"); a port followed by a path with an "@" in it is blanked too (never a secret kept).
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>\S*)(?=@)")
# A key inside a dict literal of Hydra's override grammar (``{Authorization: 'Bearer x'}``, ``[{token: x}]``).
LITERAL_KEY = re.compile(r"""[{,]\s*['"]?([^\s{}\[\],:'"]+)['"]?\s*:""")
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
    """Whether a config key (its last dotted part, in any case style) names a secret, by the word lists above."""
    words = key_words(key)
    if not words or words[-1] in NOT_SECRET_LAST_WORDS:
        return False
    if any(stem in "".join(words) for stem in SECRET_STEMS) or SECRET_WORDS.intersection(words):
        return True
    if words[-1] not in SECRET_LAST_WORDS:
        return False
    return not (words[-1].startswith("token") and len(words) > 1 and words[-2] in TEXT_TOKEN_WORDS)


def scrub_text(text: str) -> str:
    """``text`` with every URL password replaced by ``<redacted>``."""
    return URL_PASSWORD.sub(lambda m: m.group("head") + (REDACTED if m.group("password") else ""), text)


def scrub(node):
    """A copy of a plain dict/list tree with every non-empty secret value and URL password ``<redacted>``."""
    if isinstance(node, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else scrub(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [scrub(v) for v in node]
    return scrub_text(node) if isinstance(node, str) else node


def holds_secret(key: str, value: str) -> bool:
    """Whether an override ``key=value`` (as typed) is secret: by its key, a key of a literal, or a URL password."""
    inner = value[:1] in "{[" and any(is_secret_key(k) for k in LITERAL_KEY.findall(value))
    return is_secret_key(key) or inner or any(m.group("password") for m in URL_PASSWORD.finditer(value))


def hide_secret_overrides(argv: list[str]) -> list[str]:
    """``argv`` with each secret override's value (``holds_secret``) moved into an environment variable.

    Taken before Hydra's parser sees it, so no parse error can print it; numbers and unquoted dict and list literals
    are read back with ``oc.decode``; interpolations (a DDP rank relaunched with the hidden command line) stay."""
    out, takes_value = [], False
    for arg in argv:
        if takes_value or arg.startswith("-") or "=" not in arg:
            takes_value = arg in VALUE_OPTIONS
            out.append(arg)
            continue
        key, value = arg.split("=", 1)
        name = key.lstrip("+~").split("@", 1)[0]
        if not value or "${" in value or not holds_secret(name, value):
            out.append(arg)
            continue
        decoded = re.fullmatch(r"-?\d+|[{\[].*", value, re.S) is not None  # quoted: the user wants a string
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":  # quoted for Hydra: unquote, unescape
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        var = next(f"{SECRET_ENV}{i}" for i in itertools.count() if f"{SECRET_ENV}{i}" not in os.environ)
        os.environ[var] = value
        ref = f"'${{oc.decode:${{oc.env:{var}}}}}'" if decoded else f"'${{oc.env:{var}}}'"
        out.append(f"{key}={ref}")
    return out


def _leaves(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _leaves(v)]
    if isinstance(node, list):
        return [s for v in node for s in _leaves(v)]
    return [] if node is None or isinstance(node, bool) else [str(node)]


def hidden_values() -> set[str]:
    """What an error line may show of the values ``hide_secret_overrides`` hid in this process: each value as
    typed, each URL password in it, and each leaf of a dict or list value as Hydra parsed it."""
    found = set()
    for var, value in os.environ.items():
        if not var.startswith(SECRET_ENV):
            continue
        parts = [value]
        if value[:1] in "{[":
            from omegaconf import OmegaConf
            from omegaconf.errors import OmegaConfBaseException

            try:
                tree = OmegaConf.create({"v": f"${{oc.decode:${{oc.env:{var}}}}}"})
                parts += _leaves(OmegaConf.to_container(tree, resolve=True)["v"])
            except OmegaConfBaseException:  # not a literal Hydra reads either: the value as typed is all it shows
                pass
        found.update(parts)
        found.update(m.group("password") for p in parts for m in URL_PASSWORD.finditer(p))
    return {p for p in found if len(p) >= 3}  # shorter pieces would blank ordinary words of the message


def redact(text: str) -> str:
    """``text`` without any URL password nor value hidden from the command line (as a whole word, longest first)."""
    for piece in sorted(hidden_values(), key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])", REDACTED, text)
    return scrub_text(text)
