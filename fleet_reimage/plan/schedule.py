"""Kinds of exclusion reasons, for counting them (pure). The schedule itself is shown by
``views.schedule``."""

from __future__ import annotations

_REASON_GROUPS = (
    ("state", "state not eligible"),
    ("node id not selected", "excluded by pattern"),
    ("booted at", "already booted after the cutoff"),
    ("booted within", "booted within skip_booted_within"),
    ("not in --nodes-from", "not in the --nodes-from file"),
)


def reason_group(reason: str) -> str:
    """A short category for an exclusion reason, for counting."""
    for prefix, group in _REASON_GROUPS:
        if reason.startswith(prefix):
            return group
    return reason
