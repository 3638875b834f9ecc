"""A run's timeline from its journal records (pure): waves per pool, restarts, milestones.

Waves come from ``wave_started``/``wave_completed`` events. The other events become one
line each, in words, except two kinds that need more than one event to say the truth:

* **Throttling.** The adaptive throttle records every change it makes, which in a burst of
  429s is several a second. Changes of one account less than ``THROTTLE_GROUP`` seconds apart
  are one line ("throttled by the service, 8 adjustments in 3.1s: 2 requests at once ...").
* **Crashes and restarts.** A ``run_resumed`` event starts a new process on the run. Whether
  the one before it stopped (it recorded ``run_stopping``) or died (it did not) is told by the
  events between them, and how long nothing ran by the last sign of life before the resume
  (the latest event or attempt): the run's duration then says how much of it was downtime.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet_reimage.journal.model import AttemptRecord, RunEvent, TargetRecord
from fleet_reimage.units import count
from fleet_reimage.views.drains import PER_NODE_KINDS
from fleet_reimage.views.replaceview import REPLACE_EVENTS, REPLACE_STEP_KINDS, replace_event_text
from fleet_reimage.views.runchanges import EVENT_KINDS, event_text
from fleet_reimage.views.runview import clock, iso, span
from fleet_reimage.views.textgrid import grid
from fleet_reimage.views.waitwords import WAIT_KINDS, wait_event_text
from fleet_reimage.views.words import details, plain

THROTTLE_GROUP = 60.0  # seconds: throttle changes closer than this are one line
STOP_KINDS = {
    "budget": "failure budget",
    "auth": "authentication",
    "deadline": "deadline",
    "checkpoint": "checkpoint",
    "interrupted": "interrupted",
    "journal": "journal",
    "lease": "lease lost",
    "gate": "gate",
}


@dataclass(slots=True)
class WaveSpan:
    account: str
    pool: str
    wave: int  # 1-based ladder step
    of: int
    started_at: float
    completed_at: float | None = None
    pause_before: float | None = None  # since the previous wave of the pool completed
    held: bool = False  # a checkpoint held the pool after this wave
    nodes: int = 0

    @property
    def label(self) -> str:
        return f"{self.account}/{self.pool}"

    @property
    def took(self) -> float | None:
        return None if self.completed_at is None else self.completed_at - self.started_at

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "pool": self.pool,
            "wave": self.wave,
            "of": self.of,
            "nodes": self.nodes,
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "duration_s": _round(self.took),
            "pause_before_s": _round(self.pause_before),
            "held_for_checkpoint": self.held,
        }


@dataclass(frozen=True, slots=True)
class Milestone:
    """A run event worth a line of its own (not a wave boundary)."""

    at: float
    kind: str
    pool: str | None  # "account/pool" (or the account), when the event is about one
    text: str
    events: int = 1  # how many recorded events the line stands for

    def as_json(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "event": self.kind,
            "pool": self.pool,
            "text": self.text,
            "events": self.events,
        }


@dataclass(frozen=True, slots=True)
class Restart:
    """A process took the run up again (``resume``) after the previous one ended."""

    at: float
    last_alive: float  # the previous process's last event or attempt
    crashed: bool  # it ended without recording a stop (killed, crashed, power lost)
    stop_kind: str | None  # how it stopped, when it did

    @property
    def down(self) -> float:
        return max(0.0, self.at - self.last_alive)

    def as_json(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "previous_end": iso(self.last_alive),
            "after": "crash" if self.crashed else "stop",
            "stop_kind": self.stop_kind,
            "down_s": _round(self.down),
        }


@dataclass(slots=True)
class Timeline:
    waves: list[WaveSpan]
    milestones: list[Milestone]
    restarts: list[Restart] = field(default_factory=list)

    @property
    def down(self) -> float:
        """Seconds the run spent with no process driving it, between its starts."""
        return sum(r.down for r in self.restarts)

    def as_json(self) -> dict[str, Any]:
        return {
            "waves": [w.as_json() for w in self.waves],
            "events": [m.as_json() for m in self.milestones],
            "restarts": [r.as_json() for r in self.restarts],
            "down_s": _round(self.down),
        }


def timeline(
    events: Iterable[RunEvent],
    targets: Iterable[TargetRecord] = (),
    attempts: Iterable[AttemptRecord] = (),
) -> Timeline:
    """Wave spans per pool, restarts and the other milestones, from the run's records.

    A resumed run announces its current wave again: the first start is kept.
    """
    events = list(events)
    spans: dict[tuple[str, str, int], WaveSpan] = {}
    last_done: dict[tuple[str, str], float] = {}
    milestones: list[Milestone] = []
    throttles: list[RunEvent] = []
    for event in events:
        data = event.data
        pool_key = (event.account or "", event.pool or "")
        if event.kind == "wave_started" and event.pool:
            key = (*pool_key, int(data.get("wave", 0)))
            if key not in spans:
                previous = last_done.get(pool_key)
                spans[key] = WaveSpan(
                    *key,
                    of=int(data.get("of", 0)),
                    started_at=event.at,
                    pause_before=None if previous is None else event.at - previous,
                )
        elif event.kind == "wave_completed" and event.pool:
            key = (*pool_key, int(data.get("wave", 0)))
            wave = spans.get(key)
            if wave is not None:
                wave.completed_at = event.at
                wave.held = bool(data.get("held"))
            last_done[pool_key] = event.at
        elif event.kind == "throttle_changed":
            throttles.append(event)
        elif event.kind in REPLACE_STEP_KINDS:
            continue  # summed up per pool (replaceview.py)
        elif event.kind not in PER_NODE_KINDS and event.kind != "run_resumed":
            milestones.append(_milestone(event))
    restarts = find_restarts(events, attempts)
    milestones += _restart_milestones(events, restarts)
    milestones += _throttle_milestones(throttles)
    milestones.sort(key=lambda m: m.at)
    sizes: Counter[tuple[str, str, int]] = Counter((t.account, t.pool, t.wave + 1) for t in targets)
    for key, wave in spans.items():
        wave.nodes = sizes[key]
    ordered = sorted(spans.values(), key=lambda w: (w.account, w.pool, w.wave))
    return Timeline(ordered, milestones, restarts)


# --- restarts ---------------------------------------------------------------------------


def find_restarts(events: Sequence[RunEvent], attempts: Iterable[AttemptRecord]) -> list[Restart]:
    """Each ``run_resumed``: how the process before it ended, and how long nothing ran."""
    resumes = [e for e in events if e.kind == "run_resumed"]
    if not resumes:
        return []
    alive = sorted(
        [e.at for e in events if e.kind not in ("run_resumed", "runner_joined")]
        + [a.sent_at for a in attempts]
        + [a.finished_at for a in attempts if a.finished_at is not None]
    )
    out: list[Restart] = []
    previous_start = -float("inf")
    for resume in resumes:
        stops = [
            e for e in events if e.kind == "run_stopping" and previous_start <= e.at <= resume.at
        ]
        index = bisect.bisect_left(alive, resume.at)
        last = alive[index - 1] if index else resume.at
        last = max(last, previous_start) if previous_start > -float("inf") else last
        kind = str(stops[-1].data.get("kind")) if stops else None
        out.append(Restart(resume.at, last, crashed=not stops, stop_kind=kind))
        previous_start = resume.at
    return out


def _restart_milestones(events: Sequence[RunEvent], restarts: list[Restart]) -> list[Milestone]:
    resumes = [e for e in events if e.kind == "run_resumed"]
    out: list[Milestone] = []
    for event, restart in zip(resumes, restarts, strict=True):
        if restart.crashed:
            out.append(
                Milestone(
                    restart.last_alive,
                    "runner_lost",
                    None,
                    "the runner's process ended without stopping (crashed or killed): "
                    "nothing ran from here",
                )
            )
            why = "after a crash"
        else:
            why = f"after a stop ({STOP_KINDS.get(restart.stop_kind or '', restart.stop_kind)})"
        text = f"run resumed on {_where(event.data)} {why}: down {span(restart.down)}"
        text += _resume_options(event.data)
        out.append(Milestone(event.at, "run_resumed", None, text))
    return out


def _where(data: Mapping[str, object]) -> str:
    host, pid = data.get("host"), data.get("pid")
    if host is None:
        return "a runner"
    return f"{host} (pid {pid})" if pid is not None else str(host)


def _resume_options(data: Mapping[str, object]) -> str:
    parts = []
    if data.get("accept_failures"):
        parts.append("the failures so far forgiven")
    if data.get("failure_budget") is not None:
        parts.append(f"failure budget set to {plain(data['failure_budget'])}")
    return ("; " + ", ".join(parts)) if parts else ""


# --- throttling -------------------------------------------------------------------------


def _throttle_milestones(events: Sequence[RunEvent]) -> list[Milestone]:
    """Throttle changes of an account, grouped while each follows the last within a minute."""
    groups: list[list[RunEvent]] = []
    open_groups: dict[str | None, list[RunEvent]] = {}
    for event in events:
        group = open_groups.get(event.account)
        if group is None or event.at - group[-1].at > THROTTLE_GROUP:
            group = open_groups[event.account] = []
            groups.append(group)
        group.append(event)
    return [
        Milestone(g[0].at, "throttle_changed", g[0].account, throttle_text(g), len(g))
        for g in groups
    ]


def throttle_text(group: Sequence[RunEvent]) -> str:
    """One line for one or more throttle changes of an account, with units."""
    limits = [int(c) for e in group if isinstance(c := e.data.get("concurrency"), int | float)]
    rates = [float(r) for e in group if isinstance(r := e.data.get("rate"), int | float)]
    parts = []
    if limits:
        lowest = f" (lowest {min(limits)})" if min(limits) < limits[-1] else ""
        parts.append(f"{count(limits[-1], 'request')} at once{lowest}")
    if rates:
        lowest = f" (lowest {min(rates):.4g})" if min(rates) < rates[-1] else ""
        parts.append(f"paced at {rates[-1]:.4g} requests/s{lowest}")
    else:
        parts.append("not paced")
    if len(group) == 1:
        head = "throttled by the service"
        reason = str(group[0].data.get("reason") or "").removeprefix("throttled; ")
        tail = f" ({reason})" if reason else ""
    else:
        took = span(group[-1].at - group[0].at)
        head = f"throttled by the service, {len(group)} adjustments in {took}"
        tail = ""
    return f"{head}: now {', '.join(parts)}{tail}"


# --- one event, one line ----------------------------------------------------------------


def _milestone(event: RunEvent) -> Milestone:
    data = event.data
    pool = f"{event.account}/{event.pool}" if event.pool else event.account
    kind = event.kind
    if kind in EVENT_KINDS or (kind == "pool_stopped" and data.get("resumable")):
        text = event_text(event)  # what resumes changed, and pools waiting for room
    elif kind in WAIT_KINDS:
        text = wait_event_text(event)  # gates and soaks
    elif kind in REPLACE_EVENTS:
        text = replace_event_text(event)
    elif kind == "pool_stopped":
        text = f"pool stopped: {plain(data.get('reason'))}"
    elif kind == "budget_exceeded":
        text = (
            f"failure budget exceeded: {plain(data.get('failed'))} failed, "
            f"budget {plain(data.get('budget'))}"
        )
    elif kind == "run_stopping":
        stop = STOP_KINDS.get(str(data.get("kind")), plain(data.get("kind")))
        text = f"run stopping ({stop}): {plain(data.get('reason'))}"
    elif kind == "checkpoint":
        text = f"checkpoint after wave {plain(data.get('wave'))}: waiting for the operator"
    elif kind == "checkpoint_confirmed":
        text = "checkpoint confirmed: rollout continues"
    elif kind == "runner_joined":
        text = f"a runner joined: {_where(data)}"
    else:
        detail = details(data)
        text = kind.replace("_", " ") + (f": {detail}" if detail else "")
    return Milestone(event.at, kind, pool, text)


def wave_times(wave: WaveSpan, day_of: float) -> tuple[str, str, str, str, str]:
    """A wave's nodes, start, completion, duration and the pause before it, as cells."""
    return (
        str(wave.nodes),
        clock(wave.started_at, day_of),
        clock(wave.completed_at, day_of) if wave.completed_at else "running",
        span(wave.took),
        span(wave.pause_before) if wave.pause_before is not None else "",
    )


def timeline_lines(line: Timeline, day_of: float) -> list[str]:
    """The timeline as aligned text: the wave table, then one line per milestone."""
    out: list[str] = []
    rows = [
        (
            w.label,
            f"{w.wave}/{w.of}",
            *wave_times(w, day_of),
            "held for checkpoint" if w.held else "",
        )
        for w in line.waves
    ]
    headers = ("pool", "wave", "nodes", "started", "completed", "took", "pause before", "")
    if rows:
        out.extend(grid(headers, lambda: rows, right={2, 5, 6}))
    for milestone in line.milestones:
        where = f"{milestone.pool}: " if milestone.pool else ""
        out.append(f"{clock(milestone.at, day_of)}  {where}{milestone.text}")
    return out or ["no wave has started"]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
