"""Errors a user can fix: printed as one message, without a traceback, with exit code 2."""


class UserError(Exception):
    """Base class of every error caused by input or configuration, not by a bug."""


class ConfigError(UserError):
    """A config key is missing, misspelt, or out of range."""


class DataError(UserError):
    """A data file or row is unreadable or invalid; the message names the file, row and field."""


class TokenizerError(UserError):
    """The tokenizer cannot represent the prompt as required (e.g. an option letter is not one token)."""


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss became non-finite)."""


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(key: str, value, ok: bool, message: str) -> None:
    """Raise ``ConfigError("KEY=VALUE: MESSAGE")`` unless ``ok``: the one form of every range check."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {message}")
