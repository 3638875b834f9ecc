"""The live table: one frame as a ``rich`` renderable (pure; rich is imported lazily).

One line per pool and a total: wave k of n, selected, in flight, awaiting health, healthy,
failed (the total against the failure budget in use, ``17/20``), gone, skipped, retries,
throttles, unavailable against ``max_unavailable``, rate, ETA; then a note for each pool that
is not moving, and why. The wide-only columns go first when the terminal is narrow.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fleet_reimage.engine.runstate import PoolSnapshot
from fleet_reimage.units import count
from fleet_reimage.views.frame import Frame, PoolLine, sum_counts
from fleet_reimage.views.runview import span

if TYPE_CHECKING:
    from rich.console import RenderableType

# (key, header, wide only): the wide-only columns go first when the terminal is narrow.
_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("pool", "pool", False),
    ("wave", "wave", False),
    ("selected", "selected", False),
    ("in_flight", "in\nflight", False),
    ("awaiting_health", "awaiting\nhealth", False),
    ("healthy", "healthy", False),
    ("failed", "failed", False),
    ("gone", "gone", False),
    ("skipped", "skipped", False),
    ("retries", "retries", True),
    ("throttled", "throt-\ntled", True),
    ("unavailable", "unavail-\nable", True),
    ("rate", "per\nmin", True),
    ("eta", "ETA", False),
)
WIDE = 112  # columns needed by the full table with a 20-character pool name


def render_frame(frame: Frame, max_rows: int = 40, width: int = 160) -> RenderableType:
    """The live display for one frame: a headline, one row per pool, a total, notes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    columns = [c for c in _COLUMNS if width >= WIDE or not c[2]]
    # No box: rules and borders cost the width that the numbers need on a 120-column terminal.
    table = Table(
        box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, header_style="bold"
    )
    for key, header, _ in columns:
        table.add_column(header, justify="left" if key == "pool" else "right", no_wrap=True)
    shown = _rows_that_fit(frame.pools, max_rows)
    for line in shown:
        cells = _pool_cells(line)
        table.add_row(*(cells[key] for key, _, _ in columns), style="dim" if _quiet(line) else None)
    hidden = len(frame.pools) - len(shown)
    if hidden:
        table.add_row(f"+{hidden} finished pools", *[""] * (len(columns) - 1), style="dim")
    totals = _total_cells(frame)
    table.add_row(*(totals[key] for key, _, _ in columns), style="bold")
    parts: list[RenderableType] = [_headline(frame), table]
    for line in frame.pools:
        if line.snap.stopped:
            parts.append(Text(f"  {_label(line.snap)} stopped: {line.snap.stopped}", "red"))
        elif line.note and line.snap.finished < line.snap.selected:
            parts.append(Text(f"  {_label(line.snap)}: {line.note}", "yellow"))
    if frame.stopping:
        in_flight = frame.totals["in_flight"]
        waiting = (
            f"waiting for {count(in_flight, 'request')} in flight"
            if in_flight
            else "nothing in flight"
        )
        parts.append(Text(f"  stopping ({frame.stopping}); {waiting}", "yellow"))
    return Group(*parts)


def _headline(frame: Frame) -> RenderableType:
    from rich.text import Text

    selected = frame.totals["selected"]
    share = 100.0 * frame.finished / selected if selected else 100.0
    budget = frame.budget
    over = budget.counted > budget.limit
    return Text.assemble(
        ("fleet-reimage ", "bold"),
        f"{frame.action} run {frame.run_id}  ",
        (f"{frame.finished}/{selected} finished ({share:.0f}%)", "bold"),
        "  failed ",
        (budget.cell(frame.totals["failed"]), "bold red" if over else ""),
        " of budget" if not budget.forgiven else "",
        f"  elapsed {span(frame.elapsed)}  rate {_rate(frame.rate)}/min  ETA {_eta(frame)}",
    )


def _rows_that_fit(pools: list[PoolLine], max_rows: int) -> list[PoolLine]:
    """All pools when they fit; otherwise the ones still moving first (finished ones go)."""
    if len(pools) <= max_rows:
        return pools
    moving = [p for p in pools if not _quiet(p)]
    return (moving + [p for p in pools if _quiet(p)])[: max(max_rows, 1)]


def _quiet(line: PoolLine) -> bool:
    return line.snap.finished >= line.snap.selected or line.snap.stopped is not None


def _label(snap: PoolSnapshot) -> str:
    return f"{snap.account}/{snap.pool_id}"


def _pool_cells(line: PoolLine) -> dict[str, RenderableType]:
    from rich.text import Text

    s = line.snap
    if s.stopped:
        wave = "stopped"
    elif s.finished >= s.selected:
        wave = "done"
    else:
        wave = f"{s.wave}/{s.waves}"
    over = s.unavailable > s.max_unavailable  # the note under the table says why
    return {
        "pool": _label(s),
        "wave": wave,
        **_count_cells(sum_counts([s])),
        "unavailable": Text(f"{s.unavailable}/{s.max_unavailable}", "bold yellow" if over else ""),
        "rate": _rate(line.rate),
        "eta": "-" if s.stopped else _eta_text(line.eta),
    }


def _total_cells(frame: Frame) -> dict[str, RenderableType]:
    from rich.text import Text

    cells = _count_cells(frame.totals)
    failed = frame.totals["failed"]
    style = "bold red" if frame.budget.counted > frame.budget.limit or failed else ""
    cells["failed"] = Text(frame.budget.cell(failed), style)  # failed / the budget in use
    return {
        "pool": "total",
        "wave": "",
        **cells,
        "unavailable": "",
        "rate": _rate(frame.rate),
        "eta": _eta(frame),
    }


def _count_cells(t: dict[str, int]) -> dict[str, RenderableType]:
    from rich.text import Text

    def bad(value: int, style: str) -> RenderableType:
        return Text(str(value), f"bold {style}" if value else "")

    done = t["healthy"] + t["done_unverified"]  # without a health gate, accepted is done
    return {
        "selected": str(t["selected"]),
        "in_flight": str(t["in_flight"]),
        "awaiting_health": str(t["awaiting_health"]),
        "healthy": Text(str(done), "green" if done else ""),
        "failed": bad(t["failed"], "red"),
        "gone": bad(t["gone"], "yellow"),
        "skipped": bad(t["skipped"], "yellow"),
        "retries": str(t["retries"]),
        "throttled": bad(t["throttled"], "yellow"),
    }


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}"


def _eta_text(eta: float | None) -> str:
    if eta is None or math.isinf(eta):
        return "-"
    if eta < 1:
        return "0s" if eta == 0 else "<1s"
    return span(eta)


def _eta(frame: Frame) -> str:
    if frame.stopping:
        return "stopping"
    return _eta_text(frame.eta)
