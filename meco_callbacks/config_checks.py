"""Type checks of the YAML blocks this package adds, with messages that say what was given and what is expected.

A value of the wrong type otherwise fails deep inside (``train_loader.dataset.metadata.template={}`` on the command
line arrives as an empty mapping and used to stop with ``AttributeError: 'dict' object has no attribute 'count'``),
or worse, is silently taken for something else (``bool('false')`` is true). Every block checks its keys when it is
built, before any data is read or any batch trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLI_HINT = (
    ' On the command line a bare {} is read as an empty mapping and a bare number as a number: quote the value, '
    'e.g. \'train_loader.dataset.metadata.template="URL: {}\\n\\n"\'.'
)


def type_name(value: Any) -> str:
    """The YAML-facing name of a value's type: a mapping, a list, a string, ..."""
    if isinstance(value, bool):
        return 'true/false'
    if isinstance(value, Mapping):
        return 'a mapping'
    if isinstance(value, (list, tuple)):
        return 'a list'
    if isinstance(value, str):
        return 'a string'
    if isinstance(value, int):
        return 'a whole number'
    if isinstance(value, float):
        return 'a number'
    if value is None:
        return 'null'
    return type(value).__name__


def refuse(setting: str, value: Any, expected: str) -> ValueError:
    """The error for ``setting`` given ``value`` where ``expected`` was wanted."""
    hint = CLI_HINT if isinstance(value, (Mapping, int, float)) and 'string' in expected else ''
    return ValueError(f'{setting} must be {expected}; got {value!r} ({type_name(value)}).{hint}')


def check_str(setting: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` when it is a string (or None with ``optional``), else an error naming ``setting``."""
    if (value is None and optional) or isinstance(value, str):
        return value
    raise refuse(setting, value, 'a string' + (' or null' if optional else ''))


def check_bool(setting: str, value: Any) -> bool:
    """``value`` when it is true or false (not a string such as 'false', which Python would read as true)."""
    if isinstance(value, bool):
        return value
    raise refuse(setting, value, 'true or false')


def check_int(setting: str, value: Any, minimum: int | None = None) -> int:
    """``value`` when it is a whole number (not true/false) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise refuse(setting, value, 'a whole number' + (f' of at least {minimum}' if minimum is not None else ''))
    return value


def check_number(setting: str, value: Any, expected: str = 'a number') -> float:
    """``value`` when it is an int or float (not true/false)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refuse(setting, value, expected)
    return value


def check_choice(setting: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``."""
    if isinstance(value, str) and value in choices:
        return value
    raise refuse(setting, value, f'one of {", ".join(choices)}')


def check_mapping(setting: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` when it is a mapping (or None with ``optional``)."""
    if (value is None and optional) or isinstance(value, Mapping):
        return value
    raise refuse(setting, value, 'a mapping' + (' or null' if optional else ''))
