"""The error both conversion stages raise when they cannot go on as asked; its message says what to do."""

from __future__ import annotations


class ConversionError(RuntimeError):
    """A conversion cannot go on as asked (data in the way, a worker died, parts missing); the message says what to do."""
