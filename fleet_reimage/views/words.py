"""Recorded values in words: no Python spelling in anything a person reads.

Every view that puts a recorded value (an event's fields, an option) into a sentence goes
through these, so that no output says "rate None" or "accept_failures=False": a tired
operator reads English, not a ``repr``. (JSON output keeps its own types; these are for
text.) Counts with their plural are ``units.count``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def plain(value: object) -> str:
    """A recorded value as a person reads it: no ``None``, ``True``, quotes or braces.

    ``None`` is "none", booleans are "yes"/"no", whole floats lose their ".0", mappings are
    "key value, key value" and sequences "a, b".
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{_words(str(k))} {plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ", ".join(plain(v) for v in value) or "none"
    return str(value)


def details(data: Mapping[str, object]) -> str:
    """The fields of a recorded event, in words, leaving out the ones with no value."""
    return ", ".join(
        f"{_words(key)} {plain(value)}" for key, value in data.items() if value is not None
    )


def _words(key: str) -> str:
    return key.replace("_", " ")
