"""The thread that makes periodic tasks' jobs: each schedule's ticks, once across the fleet.

Every worker whose app declares schedules runs one; there is no leader. At a tick
each of them tries ``advance_schedule``, and the schedule's row in the database lets
exactly one of them make the job (pgq.schedule says how). The thread sleeps until
the next tick of any of its schedules, so an idle fleet sends no queries between
ticks but a re-declaration every ten minutes.

A worker ticks only the schedules its own app declares: a schedule removed from the
code stops as soon as no running worker declares it, and its row is deleted after
FORGET_AFTER_SECONDS without a declaration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from pgq.config import wakeup_channel
from pgq.connection import Backoff, DatabaseThread
from pgq.job import DAY_SECONDS
from pgq.queries import query
from pgq.schedule import DECLARE_INTERVAL_SECONDS, FORGET_AFTER_SECONDS, Schedule
from pgq.tasks import Task
from pgq.worker.settings import WorkerSettings

log = logging.getLogger("pgq.scheduler")

# A tick neither made here nor by another worker should not happen (a worker racing
# for it waits on the row lock for the other's commit or rollback); if it does, look
# again this soon rather than at the next tick.
_RETRY_SECONDS = 1.0
_NEVER = datetime.min.replace(tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Progress:
    """What this worker knows of one schedule's row: its id, and the tick it is done through."""

    schedule: Schedule
    task: Task
    schedule_id: int = 0
    #: Known after the first declaration.
    ticked_through: datetime = _NEVER

    def next_tick(self) -> datetime | None:
        return self.schedule.next_tick(self.ticked_through)


class Scheduler(DatabaseThread):
    """Makes the jobs of ``schedules`` at their ticks, on a connection of its own.

    ``clock`` gives the current time: tests pass a controlled one and call
    ``tick(conn)`` themselves, so a DST change is tested without waiting for it.
    """

    duty = "scheduling"
    log = log

    def __init__(
        self,
        *,
        dsn: str,
        schema: str,
        schedules: Sequence[Schedule],
        tasks: Mapping[str, Task],
        prepare_statements: bool = True,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(
            name="pgq-scheduler", dsn=dsn, prepare_statements=prepare_statements,
            backoff=Backoff(),
        )  # fmt: skip
        self.schema = schema
        self.clock = clock
        # In one order in every worker: declarations lock the rows, and two workers
        # locking the same rows in different orders could deadlock.
        ordered = sorted(schedules, key=lambda schedule: schedule.identity)
        self._progress = [_Progress(s, tasks[s.task]) for s in ordered]
        self._declared_at: datetime | None = None

    @classmethod
    def for_worker(
        cls, settings: WorkerSettings, schedules: Sequence[Schedule], tasks: Mapping[str, Task]
    ) -> Scheduler:
        return cls(
            dsn=settings.dsn, schema=settings.schema, schedules=schedules, tasks=tasks,
            prepare_statements=not settings.poll_only,
        )  # fmt: skip

    def tick(self, conn: psycopg.Connection[tuple[Any, ...]]) -> float:
        """Make every schedule's due tick; the seconds until the next one (or re-declaration)."""
        now = self.clock()
        if self._declared_at is None or (now - self._declared_at).total_seconds() >= (
            DECLARE_INTERVAL_SECONDS
        ):
            self._declare(conn, now)
        assert self._declared_at is not None
        wake_at = [self._declared_at + timedelta(seconds=DECLARE_INTERVAL_SECONDS)]
        wake_at += [self._make_due_tick(conn, progress, now) for progress in self._progress]
        # A millisecond more: a wait that ends a hair early would find nothing due yet.
        return max(0.0, (min(wake_at) - self.clock()).total_seconds()) + 0.001

    def _declare(self, conn: psycopg.Connection[tuple[Any, ...]], now: datetime) -> None:
        """Create or mark declared every schedule of this worker; delete long-undeclared ones."""
        with conn.transaction():
            for progress in self._progress:
                schedule = progress.schedule
                row = conn.execute(
                    query("declare_schedule", self.schema),
                    {"task": schedule.task, "cron": schedule.cron, "tz": schedule.tz,
                     "args": schedule.args_json, "misfire": schedule.misfire, "now": now},
                ).fetchone()  # fmt: skip
                assert row is not None
                progress.schedule_id, progress.ticked_through = row
            forgotten = conn.execute(
                query("prune_undeclared_schedules", self.schema),
                {"now": now, "forget_after_seconds": FORGET_AFTER_SECONDS},
            ).rowcount
        if forgotten:
            log.info("deleted %s schedule(s) that no worker declared for 7 days", forgotten)
        if self._declared_at is None:
            log.info("scheduling %s", "; ".join(p.schedule.describe() for p in self._progress))
        self._declared_at = now

    def _make_due_tick(
        self, conn: psycopg.Connection[tuple[Any, ...]], progress: _Progress, now: datetime
    ) -> datetime:
        """Make this schedule's due ticks, if it has any; when to look at it again."""
        for plan in progress.schedule.plan(progress.ticked_through, now):
            if self._try(conn, progress, plan.tick, plan.run):
                progress.ticked_through = plan.tick
                continue
            # Another worker made it, or is making it: read how far the row got.
            row = conn.execute(
                query("read_schedule_progress", self.schema),
                {"schedule_id": progress.schedule_id},
            ).fetchone()
            if row is None:  # deleted under us: declare it again at once
                self._declared_at = None
                return now
            progress.ticked_through = row[0]
            if progress.ticked_through < plan.tick:
                return now + timedelta(seconds=_RETRY_SECONDS)
            break  # plan again from where the row is
        next_tick = progress.next_tick()
        # None: cronsim found no later tick (a bug, or a far future); look again daily.
        return next_tick if next_tick is not None else now + timedelta(seconds=DAY_SECONDS)

    def _try(
        self, conn: psycopg.Connection[tuple[Any, ...]], progress: _Progress,
        tick: datetime, run: bool,
    ) -> bool:  # fmt: skip
        """Move the schedule to ``tick`` (making its job if ``run``); False: another worker did."""
        schedule, task = progress.schedule, progress.task
        row = conn.execute(
            query("advance_schedule", self.schema),
            {"schedule_id": progress.schedule_id, "tick": tick, "run": run,
             "queue": task.queue, "max_attempts": task.max_attempts,
             "channel": wakeup_channel(self.schema)},
        ).fetchone()  # fmt: skip
        if row is None:
            return False
        previous, job_id = row
        first_missed = schedule.next_tick(previous)
        missed = (
            f"; the ticks from {_local(first_missed, schedule)} until then were missed "
            "(no worker ran) and skipped" if first_missed is not None and first_missed < tick
            else ""
        )  # fmt: skip
        if run:
            # Every tick of an every-second schedule would otherwise be a line: the job's
            # own lines say it ran. Missed ticks are news.
            level = logging.WARNING if missed else logging.DEBUG
            log.log(level, "schedule %s: tick %s made job %s%s",
                    schedule.describe(), _local(tick, schedule), job_id, missed)  # fmt: skip
        else:
            log.warning("schedule %s: skipped tick %s, over a minute late (misfire='skip')%s",
                        schedule.describe(), _local(tick, schedule), missed)  # fmt: skip
        return True


def _local(moment: datetime, schedule: Schedule) -> str:
    return moment.astimezone(schedule.zone).isoformat()
