"""Schedules: a task's cron expression in a time zone, and which of its ticks are due.

Pure time arithmetic, no database: ``pgq.worker.scheduler`` makes the jobs, and
``pgq.admin`` shows what is next. Cron is read by cronsim, chosen over croniter
because it handles daylight saving time the way cron (cronie, Debian) does:

- a tick at a fixed local time that does not exist (02:30 on the spring-forward
  day in Europe/Berlin) runs once, at the moment the clock jumps to (03:00);
- a fixed local time that happens twice (02:30 on the fall-back day) runs once,
  at its first occurrence (02:30 summer time);
- a tick whose hour field is a wildcard or a range follows real time: "30 * * * *"
  runs twice in the repeated hour and not at all in the skipped one, so that
  "every hour" stays one hour apart.

croniter 7.0 runs the daily 02:30 twice on the fall-back day.

Ticks are whole seconds. A schedule's ticks are never made twice: each worker moves
the schedule's ``ticked_through`` forward in the same statement that inserts the
tick's job (queries.sql ``advance_schedule``), so the database, not the workers, decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from pgq.enqueue import encode_args
from pgq.errors import ConfigError, InvalidJobError, shown
from pgq.job import DAY_SECONDS


def local_time(moment: datetime | None, tz: str) -> str:
    """``2026-12-02 03:00 CET``: a schedule's time in its own zone (UTC if this machine lacks
    it), with seconds only when it has them (6-field crons). ``pgq schedules`` and the
    dashboard show times this way."""
    if moment is None:
        return ""
    try:
        moment = moment.astimezone(ZoneInfo(tz))
    except (ValueError, OSError, LookupError):
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z" if moment.second else "%Y-%m-%d %H:%M %Z")


#: What a worker does with ticks missed while no worker ran: skip them, or make the
#: latest of them. Never more: a fleet back after a night away makes one job per
#: schedule, not a burst.
Misfire = Literal["skip", "run_latest"]
MISFIRES: tuple[str, ...] = get_args(Misfire)
#: How late a tick may be and still be made, whatever the misfire policy: a deploy
#: that takes the fleet down for a few seconds must not lose the nightly job.
MISFIRE_GRACE_SECONDS = 60.0

#: How often a running worker declares its schedules again (``declared_at``).
DECLARE_INTERVAL_SECONDS = 600.0
#: A schedule that no worker declared for this long is deleted: it left the code.
FORGET_AFTER_SECONDS = 7 * DAY_SECONDS

_ONE_SECOND = timedelta(seconds=1)
_ONE_MICROSECOND = timedelta(microseconds=1)
# How far pgq steps past cronsim's answers near a clock change (one or two suffice),
# and how many ticks latest_tick walks at most (an hour of a 1-second schedule).
_CRONSIM_STEPS = 5
_WALK_LIMIT = 3600
_GRACE = timedelta(seconds=MISFIRE_GRACE_SECONDS)
_CRON_FIELDS = "5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first"


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule of a task: a job at every tick of ``cron`` in time zone ``tz``.

    Its identity in the database is (task, cron, tz, args): change any of them and
    it is a new schedule, whose ticks start from when a worker first declares it.

    Example::

        app.schedule("send_digest", cron="0 8 * * mon-fri", tz="Europe/Paris")
    """

    task: str
    cron: str
    tz: str = "UTC"
    misfire: Misfire = "skip"
    #: The args of every job it makes, as JSON text (as the job stores them).
    args_json: str = "{}"

    @classmethod
    def create(
        cls,
        task: str,
        cron: object,
        *,
        tz: object = "UTC",
        args: Mapping[str, Any] | None = None,
        misfire: object = "skip",
    ) -> Schedule:
        """A schedule with every field checked, or ConfigError naming the bad one."""
        where = f"schedule of task {task!r}"
        if not isinstance(cron, str):
            raise ConfigError(f"{where}: cron must be a string, got {shown(cron)}")
        cron_text = " ".join(cron.split())
        zone = _zone(where, tz)
        try:
            CronSim(cron_text, datetime(2000, 1, 1, tzinfo=zone))
        except CronSimError as error:
            raise ConfigError(
                f"{where}: invalid cron expression {cron!r} ({error}): use {_CRON_FIELDS}"
            ) from None
        if misfire not in MISFIRES:
            raise ConfigError(
                f"{where}: misfire must be one of {', '.join(map(repr, MISFIRES))}, "
                f"got {shown(misfire)}"
            )
        try:
            args_json = encode_args(args)
        except InvalidJobError as error:
            raise ConfigError(f"{where}: {error}") from None
        schedule = cls(task, cron_text, zone.key, misfire, args_json)  # type: ignore[arg-type]
        if schedule.next_tick(datetime(2000, 1, 1, tzinfo=zone)) is None:
            raise ConfigError(f"{where}: cron expression {cron!r} never matches a date")
        return schedule

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What makes two schedules the same one (the misfire policy is a setting of it)."""
        return (self.task, self.cron, self.tz, json.dumps(self.decoded_args, sort_keys=True))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def decoded_args(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.args_json)
        return result

    def describe(self) -> str:
        """``send_digest '0 8 * * mon-fri' Europe/Paris``, for log lines."""
        args = "" if self.args_json == "{}" else f" {self.args_json}"
        return f"{self.task} {self.cron!r} {self.tz}{args}"

    def next_tick(self, after: datetime) -> datetime | None:
        """The first tick strictly after ``after`` (None: the expression never matches again).

        Ticks are in UTC: Python compares two times of one zone by their wall clocks,
        which would put 02:30 summer time after 02:30 winter time on the fall-back night.
        """
        after = after.astimezone(UTC)
        try:
            ticks = CronSim(self.cron, self._local(after))
            # cronsim 2.8, counting from the repeated hour of a fall-back night, can
            # answer the first 02:30, which is before ``after``: take the next one.
            for _ in range(_CRONSIM_STEPS):
                tick = next(ticks).astimezone(UTC)
                if tick > after:
                    return tick
        except (StopIteration, CronSimError):
            pass
        return None

    def latest_tick(self, at: datetime) -> datetime | None:
        """The last tick at or before ``at``, in UTC: the last one ``next_tick`` reaches."""
        at = at.astimezone(UTC)
        # cronsim counts back from a whole second, strictly before it.
        start = self._local(at.replace(microsecond=0) + _ONE_SECOND)
        try:
            back = CronSim(self.cron, start, reverse=True)
            next(back)
            earlier = next(back).astimezone(UTC)
        except (StopIteration, CronSimError):
            return None
        # Counting back near a clock change, cronsim 2.8 can land on a time that counting
        # forward skips, or pass over one it reaches (the two 02:30s of a fall-back
        # night). Forward is what the scheduler makes, so walk forward from two ticks back.
        latest, tick = None, self.next_tick(earlier - _ONE_MICROSECOND)
        for _ in range(_WALK_LIMIT):
            if tick is None or tick > at:
                break
            latest, tick = tick, self.next_tick(tick)
        return latest

    def _local(self, moment: datetime) -> datetime:
        # Through UTC: a time of this zone made by adding to a wall clock may not
        # exist (02:30 on the spring-forward night), and cronsim never returns from one.
        return moment.astimezone(UTC).astimezone(self.zone)

    def plan(self, ticked_through: datetime, now: datetime) -> list[TickPlan]:
        """The ticks to make at ``now``, oldest first, when all up to ``ticked_through`` are done.

        Every tick at most MISFIRE_GRACE_SECONDS late is made: a worker that was
        busy for a few seconds, or a fleet restarted by a deploy, loses none. Older
        ticks were missed (no worker ran). They are skipped, except that with
        misfire="run_latest" and nothing on time the latest of them is made.
        """
        latest = self.latest_tick(now)
        if latest is None or latest <= ticked_through:
            return []
        on_time: list[TickPlan] = []
        # A microsecond before: a tick exactly MISFIRE_GRACE_SECONDS late is on time.
        tick = self.next_tick(max(ticked_through, now - _GRACE - _ONE_MICROSECOND))
        while tick is not None and tick <= now:
            on_time.append(TickPlan(tick=tick, run=True))
            tick = self.next_tick(tick)
        return on_time or [TickPlan(tick=latest, run=self.misfire == "run_latest")]


@dataclass(frozen=True, slots=True)
class TickPlan:
    """A tick a schedule moves to, and whether its job is made (False: a skipped misfire)."""

    tick: datetime
    run: bool


def _zone(where: str, tz: object) -> ZoneInfo:
    if not isinstance(tz, str) or not tz:
        raise ConfigError(f"{where}: tz must be a time zone name such as 'Europe/Berlin', "
                          f"got {shown(tz)}")  # fmt: skip
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: 'Europe' is a folder
        raise ConfigError(
            f"{where}: unknown time zone {tz!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None
