"""Errors a user can fix: printed as one message, without a traceback, with exit code 2."""

from __future__ import annotations

from contextlib import contextmanager


class UserError(Exception):
    """Base class of every error caused by input or configuration, not by a bug."""


class ConfigError(UserError):
    """Config keys missing, misspelt, or out of range; ``problems`` lists each one (``every_problem``)."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(self.problems, 1))
        many = f"{len(self.problems)} problems in the config: {listed}"
        super().__init__(self.problems[0] if len(self.problems) == 1 else many)


class DataError(UserError):
    """A data file or row is unreadable or invalid; the message names the file, row and field."""


class TokenizerError(UserError):
    """The tokenizer cannot represent the prompt as required (e.g. an option letter is not one token)."""


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss became non-finite)."""


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # true is not 1 here


class Section:
    """A config section: ``check`` (its range checks) runs when built from a composed config, not while OmegaConf
    builds the schema itself, whose values are all still missing ("???")."""

    def __post_init__(self) -> None:
        if not any(isinstance(v, str) and v == "???" for v in vars(self).values()):
            self.check()

    def check(self) -> None:
        pass


_collecting: list[list[str]] = []


def require(key: str, value, ok: bool, message: str) -> None:
    """The one form of every range check: ``"KEY=VALUE: MESSAGE"`` unless ``ok``. Raised as a ConfigError, or,
    inside ``every_problem``, recorded so that one refusal names every problem."""
    if ok:
        return
    problem = f"{key}={value!r}: {message}"
    if not _collecting:
        raise ConfigError(problem)
    _collecting[-1].append(problem)


@contextmanager
def every_problem():
    """Collect the problems ``require`` finds inside (and any UserError raised there) into one ConfigError. An
    exception after a recorded problem (a component built from an out-of-range value) is its consequence: dropped."""
    problems: list[str] = []
    _collecting.append(problems)
    try:
        yield problems
    except UserError as e:
        problems.extend(getattr(e, "problems", [str(e)]))
    except Exception:
        if not problems:
            raise
    finally:
        _collecting.pop()
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
