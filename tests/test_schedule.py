"""Declaring schedules (@app.periodic, app.schedule) and which ticks a cron expression has."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pgq
from pgq.schedule import MISFIRE_GRACE_SECONDS, Schedule

BERLIN = ZoneInfo("Europe/Berlin")


def ticks(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    found, moment = [], start
    for _ in range(count):
        tick = schedule.next_tick(moment)
        assert tick is not None
        found.append(tick)
        moment = tick
    return found


def test_periodic_registers_the_task_and_its_schedule() -> None:
    app = pgq.App()

    @app.periodic("0 3 * * *", tz="Europe/Berlin", args={"kind": "full"}, queue="reports",
                  max_attempts=2)  # fmt: skip
    def nightly_report(kind: str) -> None: ...

    assert app.tasks["nightly_report"].queue == "reports"
    assert app.tasks["nightly_report"].max_attempts == 2
    [schedule] = app.schedules
    assert (schedule.task, schedule.cron, schedule.tz) == ("nightly_report", "0 3 * * *",
                                                           "Europe/Berlin")  # fmt: skip
    assert schedule.decoded_args == {"kind": "full"}
    assert schedule.misfire == "skip"
    assert nightly_report("x") is None  # still callable as a plain function


def test_a_task_may_have_several_schedules() -> None:
    app = pgq.App()

    @app.task()
    def sync_account(account: int) -> None: ...

    app.schedule(sync_account, cron="*/15 * * * *", args={"account": 1})
    app.schedule("sync_account", cron="*/15 * * * *", args={"account": 2}, misfire="run_latest")
    assert [s.decoded_args for s in app.schedules] == [{"account": 1}, {"account": 2}]
    assert app.schedules[1].misfire == "run_latest"


def test_six_fields_put_seconds_first() -> None:
    schedule = Schedule.create("t", "*/15 * * * * *")
    start = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert ticks(schedule, start, 3) == [start + timedelta(seconds=s) for s in (15, 30, 45)]


def test_five_fields_tick_on_the_minute() -> None:
    schedule = Schedule.create("t", "*/20  *  * * *")  # extra spaces are one
    assert schedule.cron == "*/20 * * * *"
    start = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert ticks(schedule, start, 2) == [
        datetime(2026, 1, 1, 12, 20, tzinfo=UTC),
        datetime(2026, 1, 1, 12, 40, tzinfo=UTC),
    ]


def test_a_fixed_local_time_in_the_skipped_hour_ticks_once_when_the_clock_jumps() -> None:
    schedule = Schedule.create("t", "30 2 * * *", tz="Europe/Berlin")
    found = ticks(schedule, datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN), 2)
    assert [t.astimezone(BERLIN).isoformat() for t in found] == [
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist that night
        "2026-03-30T02:30:00+02:00",
    ]


def test_a_fixed_local_time_in_the_repeated_hour_ticks_once() -> None:
    schedule = Schedule.create("t", "30 2 * * *", tz="Europe/Berlin")
    found = ticks(schedule, datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN), 2)
    assert [t.astimezone(BERLIN).isoformat() for t in found] == [
        "2026-10-25T02:30:00+02:00",  # the first 02:30 only
        "2026-10-26T02:30:00+01:00",
    ]


def test_an_hourly_schedule_stays_an_hour_apart_across_the_fall_back() -> None:
    schedule = Schedule.create("t", "30 * * * *", tz="Europe/Berlin")
    found = ticks(schedule, datetime(2026, 10, 25, 1, 0, tzinfo=BERLIN), 4)
    assert [t.astimezone(BERLIN).isoformat() for t in found] == [
        "2026-10-25T01:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:30:00+01:00",
    ]
    assert {b - a for a, b in itertools.pairwise(found)} == {timedelta(hours=1)}


@pytest.mark.parametrize(
    ("cron", "tz", "misfire", "message"),
    [
        ("61 * * * *", "UTC", "skip", "invalid cron expression '61 * * * *' (Bad minute)"),
        ("* * *", "UTC", "skip", "invalid cron expression '* * *' (Wrong number of fields)"),
        ("0 0 31 2 *", "UTC", "skip", "invalid cron expression '0 0 31 2 *'"),
        (None, "UTC", "skip", "cron must be a string, got None"),
        ("0 * * * *", "Europe/Berln", "skip", "unknown time zone 'Europe/Berln'"),
        ("0 * * * *", "Europe", "skip", "unknown time zone 'Europe'"),
        ("0 * * * *", "", "skip", "tz must be a time zone name"),
        ("0 * * * *", "UTC", "catch_up", "misfire must be one of 'skip', 'run_latest'"),
    ],
)
def test_a_bad_schedule_is_refused_at_decoration_naming_the_problem(
    cron: object, tz: str, misfire: str, message: str
) -> None:
    app = pgq.App()
    with pytest.raises(pgq.ConfigError, match="schedule of task 'report'") as error:

        @app.periodic(cron, tz=tz, misfire=misfire)  # type: ignore[arg-type]
        def report() -> None: ...

    assert message in str(error.value)
    assert "report" not in app.tasks  # no task left behind without its schedule


def test_schedule_args_are_checked_against_the_handler() -> None:
    app = pgq.App()

    @app.task()
    def sync_account(account: int) -> None: ...

    with pytest.raises(pgq.ConfigError, match="unexpected arg 'acount'"):
        app.schedule(sync_account, cron="* * * * *", args={"acount": 1})
    with pytest.raises(pgq.ConfigError, match="missing the required arg 'account'"):
        app.schedule(sync_account, cron="* * * * *")
    with pytest.raises(pgq.ConfigError, match="JSON-serialisable"):
        app.schedule(sync_account, cron="* * * * *", args={"account": object()})


def test_scheduling_an_unknown_task_or_the_same_schedule_twice_is_refused() -> None:
    app = pgq.App()

    @app.task()
    def report() -> None: ...

    with pytest.raises(pgq.ConfigError, match="cannot schedule 'reprot': no such task"):
        app.schedule("reprot", cron="0 * * * *")
    app.schedule(report, cron="0 * * * *")
    with pytest.raises(pgq.ConfigError, match="declared twice"):
        app.schedule(report, cron="0  *  * * *")


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]
CRONS = ["30 2 * * *", "30 * * * *", "*/20 * * * *", "*/15 2 * * *", "15 1-3 * * *",
         "*/7 * * * * *", "0 0 L * *"]  # fmt: skip


# Around each zone's clock changes in 2026 (a window of hours either side), and anywhere.
CHANGES = [datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC),
           datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC),
           datetime(2026, 4, 4, 15, tzinfo=UTC), datetime(2026, 10, 3, 15, tzinfo=UTC),
           datetime(2026, 4, 5, 3, tzinfo=UTC), datetime(2026, 9, 6, 4, tzinfo=UTC)]  # fmt: skip
MOMENTS = st.one_of(
    st.builds(lambda change, seconds: change + timedelta(seconds=seconds),
              st.sampled_from(CHANGES), st.floats(-6 * 3600, 6 * 3600)),
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31),
                 timezones=st.just(UTC)),
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(zone=st.sampled_from(ZONES), cron=st.sampled_from(CRONS), moment=MOMENTS)
def test_the_latest_and_next_ticks_bracket_any_moment_in_any_zone(
    zone: str, cron: str, moment: datetime
) -> None:
    schedule = Schedule.create("t", cron, tz=zone)
    latest, following = schedule.latest_tick(moment), schedule.next_tick(moment)
    assert latest is not None and following is not None
    assert latest <= moment < following
    # No tick between them: counting forward from the latest tick reaches the next one.
    assert schedule.next_tick(latest) == following
    assert latest.microsecond == 0 and following.microsecond == 0


@settings(max_examples=500, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    cron=st.sampled_from(CRONS),
    now=MOMENTS,
    idle_seconds=st.floats(0, 3 * 86400),
    misfire=st.sampled_from(["skip", "run_latest"]),
)
def test_a_plan_is_the_due_ticks_in_order_ending_with_the_latest(
    zone: str, cron: str, now: datetime, idle_seconds: float, misfire: str
) -> None:
    schedule = Schedule.create("t", cron, tz=zone, misfire=misfire)
    ticked_through = now - timedelta(seconds=idle_seconds)
    plan = schedule.plan(ticked_through, now)
    ticks = [step.tick for step in plan]
    assert ticks == sorted(set(ticks))
    assert all(ticked_through < tick <= now for tick in ticks)
    latest = schedule.latest_tick(now)
    assert latest is not None
    assert ticks == [] if latest <= ticked_through else ticks[-1] == latest
    late = [step for step in plan if (now - step.tick).total_seconds() > MISFIRE_GRACE_SECONDS]
    if late:  # a late tick is planned alone, and made only under run_latest
        assert plan == late and len(plan) == 1 and plan[0].run == (misfire == "run_latest")
    else:
        assert all(step.run for step in plan)
