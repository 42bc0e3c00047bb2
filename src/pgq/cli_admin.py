"""Operators' commands: `pgq stats`, `schedules`, `jobs`, `job`, `requeue`, `cancel`, `prune`.

The fleet's own commands, `pgq tasks` and `pgq workers`, are in cli_fleet.py.

Each calls a function of pgq.admin, which wraps a documented view or SQL function.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from pgq import admin
from pgq.cli_shared import (
    Commands,
    DryRunOption,
    DsnOption,
    JsonOption,
    SchemaOption,
    YesOption,
    ago,
    confirm,
    database,
    duration_text,
    fail,
    out,
    parse_job_id,
    print_json,
)
from pgq.config import parse_duration
from pgq.errors import ConfigError, PgqError
from pgq.job import JobStatus
from pgq.logs import plural, printable
from pgq.schedule import local_time

admin_commands = Commands()


def _moment(text: str | None, option: str) -> datetime | None:
    """``2h`` (that long ago) or an ISO 8601 time with its offset."""
    if text is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except (ConfigError, OverflowError):  # not a duration, or before year 1
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option} {text!r}: give a duration ago (30m, 2h, 7d) or an ISO time with offset")
    if moment.tzinfo is None:
        example = f"{text}+00:00" if "T" in text or " " in text else f"{text}T00:00+00:00"
        fail(f"{option} {text!r}: add a time and a UTC offset, e.g. {example}")
    return moment


_QUEUE_COLUMNS = (
    "queue",
    "due",
    "scheduled",
    "running",
    "lease expired",
    "lag",
    "dead",
    "last died",
)


@admin_commands.command()
def stats(
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    all_statuses: Annotated[
        bool,
        typer.Option("--all", help="Also count finished jobs by status (scans the whole table)."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Per queue: due, scheduled, running and dead jobs, and lag.

    Lag is the age of the oldest due job. These are read from indexes, cheap
    however long the history; --all reads the whole table. Then the queued
    jobs that no live worker serves (no worker has their task, or none that
    has it serves their queue): a misspelt task name shows up there.
    """
    with database(dsn, schema) as (conn, schema_name):
        rows = [q.as_dict() for q in admin.queue_overview(conn, schema=schema_name)]
        counts = admin.job_counts(conn, schema=schema_name) if all_statuses else []
        unserved = admin.unserved_jobs(conn, schema=schema_name)
        workers_alive = bool(admin.live_workers(conn, schema=schema_name))
    if as_json:
        print_json({
            "queues": rows,
            "counts": [{"queue": q, "status": s, "jobs": n} for q, s, n in counts],
            "unserved": [dataclasses.asdict(u) for u in unserved],
        })  # fmt: skip
        return
    table = Table(title="pgq queues")
    for column in _QUEUE_COLUMNS:
        table.add_column(column, justify="left" if column == "queue" else "right")
    for row in rows:
        table.add_row(
            escape(row["queue"]),
            *(str(row[key]) for key in ("due", "scheduled", "running", "lease_expired")),
            duration_text(row["lag_seconds"]),
            str(row["dead"]),
            ago(row["last_died_at"]),
        )
    if not rows:
        table.caption = "no queued, running or dead jobs"
    out.print(table)
    if unserved and workers_alive:
        out.print(_unserved_table(unserved))
    elif unserved:
        out.print("no live worker: every queued job waits for one (pgq work APP)", highlight=False)
    if all_statuses:
        by_status = Table(title="all jobs by queue and status")
        for column in ("queue", *(s.value for s in JobStatus)):
            by_status.add_column(column, justify="left" if column == "queue" else "right")
        grid: dict[str, dict[str, int]] = {}
        for queue, status, jobs in counts:
            grid.setdefault(queue, {})[status] = jobs
        for queue, row in sorted(grid.items()):
            by_status.add_row(escape(queue), *(str(row.get(s.value, 0)) for s in JobStatus))
        out.print(by_status)


def _unserved_table(unserved: list[admin.UnservedJobs]) -> Table:
    table = Table(title="queued jobs no live worker serves (a misspelt task? a worker missing?)")
    for column in ("task", "queue", "due", "scheduled", "oldest run_at"):
        table.add_column(column, justify="left" if column in ("task", "queue") else "right")
    for row in unserved:
        table.add_row(
            escape(row.task), escape(row.queue), str(row.due), str(row.scheduled),
            ago(row.oldest_run_at) if row.due else row.oldest_run_at.isoformat(timespec="seconds"),
        )  # fmt: skip
    return table


@admin_commands.command()
def schedules(
    dsn: DsnOption = None, schema: SchemaOption = None, as_json: JsonOption = False
) -> None:
    """Periodic schedules: next run, last tick and its job's status.

    Times are in each schedule's time zone. A schedule that no running worker
    declared in the last 20 minutes is not ticking: it shows no next run.
    """
    with database(dsn, schema) as (conn, schema_name):
        found = admin.schedules(conn, schema=schema_name)
    if as_json:
        print_json({"schedules": [_schedule_row(s) for s in found]})
        return
    table = Table(title="pgq schedules")
    for column in ("task", "cron", "tz", "args", "misfire", "next run", "last tick", "last job"):
        table.add_column(column)
    for s in found:
        args = "" if s.args == {} else json.dumps(s.args, ensure_ascii=False)
        if s.declared and s.next_run is not None:
            next_run = f"{local_time(s.next_run, s.tz)}, in {duration_text(_until(s.next_run))}"
        else:
            next_run = "none: no worker declares it" if not s.declared else "never"
        table.add_row(
            escape(s.task), escape(s.cron), escape(s.tz), _one_line(args), s.misfire, next_run,
            local_time(s.last_tick, s.tz), _last_job(s),
        )  # fmt: skip
    if not found:
        table.caption = "no schedules: declare them with @app.periodic or app.schedule"
    out.print(table)


def _schedule_row(s: admin.ScheduleStatus) -> dict[str, Any]:
    return {
        "id": s.id, "task": s.task, "cron": s.cron, "tz": s.tz, "args": s.args,
        "misfire": s.misfire, "declared": s.declared, "next_run": s.next_run,
        "last_tick": s.last_tick, "last_job_id": s.last_job_id,
        "last_job_status": s.last_job_status, "declared_at": s.declared_at,
    }  # fmt: skip


def _until(moment: datetime) -> float:
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _last_job(s: admin.ScheduleStatus) -> str:
    if s.last_job_id is None:
        return ""
    return f"{s.last_job_id} {s.last_job_status or '(pruned)'}"


@admin_commands.command()
def jobs(
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    status: Annotated[
        str | None,
        typer.Option(metavar="STATUS", help="queued, running, succeeded, dead or cancelled."),
    ] = None,
    queue: Annotated[str | None, typer.Option(metavar="QUEUE", help="Only this queue.")] = None,
    task: Annotated[str | None, typer.Option(metavar="TASK", help="Only this task.")] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="Created since: a duration ago (2h, 7d) or an ISO time."),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(min=1, max=100_000, metavar="N", help="At most this many, newest first."),
    ] = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first, filtered by status, queue, task and age."""
    created_since = _moment(since, "--since")
    with database(dsn, schema) as (conn, schema_name):
        found = admin.list_jobs(
            conn,
            status=status,
            queue=queue,
            task=task,
            since=created_since,
            limit=limit,
            schema=schema_name,
        )
    if as_json:
        print_json([job.as_dict() for job in found])
        return
    if not found:
        # A line, not an empty table; the filters as typed, to see which one excluded all.
        given = {"--status": status, "--queue": queue, "--task": task, "--since": since}
        selection = _as_typed(given)
        out.print(f"no jobs match {selection}" if selection else "no jobs", highlight=False)
        return
    table = _job_table(
        f"pgq jobs ({len(found)} shown)",
        ("id", "queue", "task", "status", "attempts", "created", "last error"),
    )
    for job in found:
        table.add_row(
            str(job.id),
            _one_line(job.queue),
            _one_line(job.task),
            job.status,
            f"{job.attempts}/{'-' if job.max_attempts is None else job.max_attempts}",
            ago(job.created_at),
            _one_line(job.last_error or ""),
        )
    out.print(table)


def _job_table(title: str, columns: tuple[str, ...]) -> Table:
    """A table of one line per job, where only the queue, task and error columns narrow."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, no_wrap=column not in ("queue", "task", "last error"))
    return table


def _one_line(text: str) -> Text:
    """``text`` on one line, cut with an ellipsis at the terminal's width: `pgq job` has it all."""
    return Text(" ".join(printable(text).split()), no_wrap=True, overflow="ellipsis")


def _shown(text: str) -> str:
    """Stored text as rich prints it in a table cell: no markup, and no control character
    reaches the terminal (a line break stays one: a traceback keeps its lines)."""
    return escape(printable(text, newlines=True))


@admin_commands.command()
def job(
    job_id: Annotated[int, typer.Argument(metavar="ID", help="A job id.", parser=parse_job_id)],
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one job: args, state, lease, progress, result and errors."""
    with database(dsn, schema) as (conn, schema_name):
        found = admin.get_job(conn, job_id, schema=schema_name)
    detail = found.as_dict()
    if as_json:
        print_json(detail)
        return
    table = Table(title=f"job {found.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in detail.items():
        if key in ("errors", "args", "progress", "result"):
            continue
        table.add_row(key, _shown("" if value is None else str(value)))
    for key in ("args", "progress", "result"):
        value = detail[key]
        # Args Python cannot decode come as their text; a result's text is a JSON string.
        undecodable = key == "args" and isinstance(value, str)
        text = value if undecodable else json.dumps(value, ensure_ascii=False)
        if key == "args" or value is not None:
            table.add_row(key, _shown(text[:2_000]))
    out.print(table)
    if found.errors:
        history = Table(title="error history, oldest first")
        for column in ("attempt", "at", "worker", "event or error"):
            history.add_column(column)
        for entry in found.errors:
            history.add_row(
                str(entry.get("attempt", "")),
                str(entry.get("at", "")),
                _shown(str(entry.get("worker") or entry.get("by") or "")),
                _shown(str(entry.get("error") or entry.get("event") or "")),
            )
        out.print(history)


@admin_commands.command()
def requeue(
    job_ids: Annotated[
        list[int] | None,
        typer.Argument(
            metavar="ID", help="Job ids: dead or cancelled jobs to requeue.", parser=parse_job_id
        ),
    ] = None,
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    task: Annotated[
        str | None, typer.Option(metavar="TASK", help="Dead jobs of this task.")
    ] = None,
    queue: Annotated[
        str | None, typer.Option(metavar="QUEUE", help="Dead jobs of this queue.")
    ] = None,
    error: Annotated[
        str | None,
        typer.Option(
            metavar="PATTERN",
            help="Dead jobs whose last error matches this ILIKE pattern, e.g. '%timeout%'.",
        ),
    ] = None,
    died_after: Annotated[
        str | None, typer.Option(metavar="TIME", help="Died since: 2h, 7d or an ISO time.")
    ] = None,
    died_before: Annotated[
        str | None, typer.Option(metavar="TIME", help="Died before: 2h, 7d or an ISO time.")
    ] = None,
    all_dead: Annotated[
        bool, typer.Option("--all-dead", help="Every dead job (no filter).")
    ] = False,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
) -> None:
    """Requeue dead (or cancelled) jobs by id, or dead jobs by filter.

    Attempts restart from zero; the error history is kept. Queued, running and
    succeeded jobs are refused: they would run twice. By filter, it asks first.
    """
    where = admin.DeadJobFilter(
        task=task,
        queue=queue,
        error_pattern=error,
        died_after=_moment(died_after, "--died-after"),
        died_before=_moment(died_before, "--died-before"),
    )
    has_filter = any(value is not None for value in where.params().values())
    if job_ids and (has_filter or all_dead):
        fail("give job ids or filters, not both")
    if not job_ids and not has_filter and not all_dead:
        fail(
            "say which jobs: ids, a filter (--task, --queue, --error, --died-after, "
            "--died-before), or --all-dead"
        )
    # Named ids need no question; a filter can match thousands, which all run again.
    given = {"--task": task, "--queue": queue, "--error": error,
             "--died-after": died_after, "--died-before": died_before}  # fmt: skip
    selection = _as_typed(given)
    with database(dsn, schema) as (conn, schema_name):
        if job_ids:
            _requeue_ids(conn, job_ids, schema_name, dry_run)
        else:
            _requeue_by_filter(conn, where, schema_name, dry_run, selection, yes)


def _as_typed(options: dict[str, str | None]) -> str:
    """The options given, as a shell would take them: ``--queue emails --error '%x y%'``."""
    return " ".join(f"{flag} {shlex.quote(v)}" for flag, v in options.items() if v is not None)


def _requeue_ids(conn: Any, job_ids: list[int], schema: str, dry_run: bool) -> None:
    failed = 0
    for job_id in job_ids:
        try:
            if dry_run:
                found = admin.get_job(conn, job_id, schema=schema)
                refusal = admin.requeue_refusal(conn, found, schema=schema)
                verdict = "would requeue" if refusal is None else f"would refuse: {refusal}"
                out.print(f"job {job_id} ({escape(found.task)}): {verdict}", highlight=False)
            else:
                admin.requeue(conn, job_id, schema=schema)
                out.print(f"job {job_id}: requeued", highlight=False)
        except PgqError as problem:
            failed += 1
            out.print(
                f"job {job_id}: [red]not requeued[/]: {escape(str(problem))}", highlight=False
            )
    if failed:
        raise typer.Exit(1)


def _requeue_by_filter(
    conn: Any, where: admin.DeadJobFilter, schema: str, dry_run: bool, selection: str, yes: bool
) -> None:
    total = admin.count_dead_jobs(conn, where, schema=schema)
    if dry_run:
        matching = admin.find_dead_jobs(conn, where, limit=100, schema=schema)
        table = _job_table(
            f"dry run: {plural(total, 'dead job')} would be requeued",
            ("id", "queue", "task", "attempts", "died", "last error"),
        )
        for found in matching:
            table.add_row(
                str(found.id),
                _one_line(found.queue),
                _one_line(found.task),
                str(found.attempts),
                ago(found.died_at),
                _one_line(found.last_error or ""),
            )
        if total > len(matching):
            table.caption = f"first {len(matching)} of {total}, by id"
        out.print(table)
        return
    if total:
        which = f"matching {selection}" if selection else "(--all-dead)"
        confirm(
            f"requeue {plural(total, 'dead job')} {which}",
            warning="Each runs again, with its attempts from zero.",
            yes=yes,
        )
    with Progress(console=out, transient=True) as progress:
        bar = progress.add_task("requeueing", total=total or None)
        requeued = admin.requeue_dead(
            conn, where, schema=schema, on_batch=lambda n: progress.advance(bar, n)
        )
    skipped = total - len(requeued)
    note = (
        f"; {skipped} skipped (their dedupe key is taken, or they changed meanwhile)"
        if skipped > 0
        else ""
    )
    out.print(f"requeued {plural(len(requeued), 'dead job')}{note}", highlight=False)


@admin_commands.command()
def cancel(
    job_ids: Annotated[
        list[int],
        typer.Argument(
            metavar="ID", help="Job ids: queued or running jobs to cancel.", parser=parse_job_id
        ),
    ],
    dsn: DsnOption = None,
    schema: SchemaOption = None,
) -> None:
    """Cancel queued or running jobs. A running job's worker is told to stop it; finished jobs
    are refused."""
    failed = 0
    with database(dsn, schema) as (conn, schema_name):
        for job_id in job_ids:
            try:
                admin.cancel(conn, job_id, schema=schema_name)
                out.print(f"job {job_id}: cancelled", highlight=False)
            except PgqError as problem:
                failed += 1
                out.print(
                    f"job {job_id}: [red]not cancelled[/]: {escape(str(problem))}", highlight=False
                )
    if failed:
        raise typer.Exit(1)


@admin_commands.command()
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            metavar="AGE", help="Delete jobs finished longer ago than this: 7d, 12h, 30m."
        ),
    ],
    status: Annotated[
        list[str] | None,
        typer.Option(
            metavar="STATUS",
            help="Finished statuses to prune (repeat). Default: succeeded and cancelled.",
        ),
    ] = None,
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=100_000, metavar="N", help="Rows per delete.")
    ] = 1000,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
) -> None:
    """Delete finished jobs older than an age.

    It counts them and asks first (--yes answers for a script, --dry-run only
    counts), then deletes in small batches, which hold no long locks.
    """
    try:
        age_seconds = parse_duration(older_than)
    except ConfigError as problem:
        fail(f"{problem} (--older-than)")
    with database(dsn, schema) as (conn, schema_name):
        plan = admin.plan_prune(
            conn, status or ["succeeded", "cancelled"], age_seconds, schema=schema_name
        )
        doomed = _prunable(plan, older_than)
        if dry_run:
            out.print(f"dry run: would delete {doomed}; nothing deleted", highlight=False)
            return
        if plan.total:
            confirm(f"delete {doomed}", yes=yes)
        deleted = admin.prune_as_planned(conn, plan, batch_size=batch_size, schema=schema_name)
    for pruned, count in deleted.items():
        out.print(
            f"pruned {plural(count, f'{pruned.value} job')} older than {older_than}",
            highlight=False,
        )


def _prunable(plan: admin.PrunePlan, older_than: str) -> str:
    """``3 dead jobs finished before 2030-01-01 12:00:00 UTC (older than 7d)``."""
    counts = [plural(n, f"{status.value} job") for status, n in plan.jobs.items()]
    listed = ", ".join(counts[:-1]) + " and " + counts[-1] if len(counts) > 1 else counts[0]
    moment = plan.finished_before.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{listed} finished before {moment} (older than {older_than})"
