"""Plain aligned text tables and Markdown tables (pure, no terminal needed).

``status`` and ``report`` print through these rather than through ``rich``: their output is
often piped to a file or pasted into a ticket, where a table must not wrap at 80 columns or
carry escape codes, and a 100,000-row table must not be laid out in memory twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

Rows = Callable[[], Iterable[Sequence[str]]]


def grid(headers: Sequence[str], rows: Rows, *, right: set[int] | None = None) -> Iterator[str]:
    """Lines of an aligned table: header, a rule, then the rows.

    ``rows`` is called twice (widths, then lines), so the rows may be a generator over a
    big run without being kept. Columns in ``right`` are right-aligned; the last column is
    never padded.
    """
    right = right or set()
    widths = [len(h) for h in headers]
    for row in rows():
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    yield _line(headers, widths, right)
    yield _line(["-" * w for w in widths], widths, right)
    for row in rows():
        yield _line(row, widths, right)


def _line(cells: Sequence[str], widths: Sequence[int], right: set[int]) -> str:
    last = len(cells) - 1
    parts = []
    for index, cell in enumerate(cells):
        if index == last:
            parts.append(cell.rjust(widths[index]) if index in right else cell)
        elif index in right:
            parts.append(cell.rjust(widths[index]))
        else:
            parts.append(cell.ljust(widths[index]))
    return "  ".join(parts).rstrip()


def md_cell(text: object) -> str:
    """Text safe inside a Markdown table cell: no pipe, no line break."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GitHub-flavoured Markdown table; cells must already be ``md_cell``-safe."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines
