"""The overview's chart of the last hour, drawn as SVG on the server (no chart library, no JS).

Per minute, a bar of jobs finished (succeeded below, dead stacked on top) and a
line of the mean wait from due to start: throughput and lag on one picture.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgq.admin import MinuteActivity

WIDTH, HEIGHT = 720, 180
PLOT_TOP, PLOT_BOTTOM = 10, 160


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    succeeded_y: float
    succeeded_height: float
    dead_y: float
    dead_height: float
    title: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    wait_points: str
    busiest_minute: int
    longest_wait_seconds: float
    finished: int
    dead: int
    first_minute: str
    last_minute: str


def activity_chart(minutes: list[MinuteActivity]) -> Chart:
    """Bars scaled to the busiest minute, the wait line to the longest mean wait."""
    busiest = max((m.succeeded + m.dead for m in minutes), default=0)
    longest = max((m.mean_wait_seconds for m in minutes), default=0.0)
    span = PLOT_BOTTOM - PLOT_TOP
    slot = WIDTH / max(len(minutes), 1)
    bars, points = [], []
    for index, minute in enumerate(minutes):
        scale = span / busiest if busiest else 0.0
        ok_height, dead_height = minute.succeeded * scale, minute.dead * scale
        x = index * slot
        bars.append(Bar(
            x=round(x + 1, 1), width=round(max(slot - 2, 1), 1),
            succeeded_y=round(PLOT_BOTTOM - ok_height, 1), succeeded_height=round(ok_height, 1),
            dead_y=round(PLOT_BOTTOM - ok_height - dead_height, 1),
            dead_height=round(dead_height, 1),
            title=f"{minute.minute:%H:%M} UTC: {minute.succeeded} succeeded, {minute.dead} dead, "
            f"mean wait {minute.mean_wait_seconds:.2f}s",
        ))  # fmt: skip
        wait_y = PLOT_BOTTOM - (minute.mean_wait_seconds / longest * span if longest else 0.0)
        points.append(f"{x + slot / 2:.1f},{wait_y:.1f}")
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        wait_points=" ".join(points),
        busiest_minute=busiest,
        longest_wait_seconds=longest,
        finished=sum(m.succeeded + m.dead for m in minutes),
        dead=sum(m.dead for m in minutes),
        first_minute=f"{minutes[0].minute:%H:%M}" if minutes else "",
        last_minute=f"{minutes[-1].minute:%H:%M}" if minutes else "",
    )
