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


SECRET_ENV = "CALIBRATION_LIGHTNING_SECRET_"


def hide_secret_overrides(argv: list[str]) -> list[str]:
    """The command line with each secret override's value (``+judge.api_key=...``) moved into an environment
    variable: the override becomes ``KEY='${oc.env:CALIBRATION_LIGHTNING_SECRET_N}'``, so the command line,
    Hydra's ``.hydra/``, the job log and the W&B run's arguments never hold the value, and the run still
    sees it. Flags, sweeps and what does not parse as an override are kept as they are (Hydra reports those)."""
    import os

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    hidden = []
    for text in argv:
        try:
            (o,) = parser.parse_overrides([text]) if "=" in text and not text.startswith("-") else (None,)
        except OverrideParseException:
            o = None
        if o is None or o.is_delete() or o.is_sweep_override() or not is_secret_key(o.key_or_group):
            hidden.append(text)
            continue
        value = o.value()
        if value is None or value == "" or isinstance(value, (dict, list)) or "${" in str(value):
            hidden.append(text)  # nothing to hide, or already an interpolation (a relaunched DDP rank's argv)
            continue
        var = f"{SECRET_ENV}{sum(k.startswith(SECRET_ENV) for k in os.environ)}"
        os.environ[var] = str(value)
        ref = f"'${{oc.env:{var}}}'" if isinstance(value, str) else f"'${{oc.decode:${{oc.env:{var}}}}}'"
        hidden.append(f"{o.get_key_element()}={ref}")
    return hidden
