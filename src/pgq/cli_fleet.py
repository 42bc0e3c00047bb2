"""The fleet's commands: `pgq tasks` (the task registry) and `pgq workers` (the live workers).

Each calls a function of pgq.admin, which reads a documented view
(task_defaults, live_workers; migrations/versions/0006).
"""

from __future__ import annotations

import dataclasses

from rich.markup import escape
from rich.table import Table

from pgq import admin
from pgq.cli_shared import (
    Commands,
    DsnOption,
    JsonOption,
    SchemaOption,
    ago,
    database,
    out,
    print_json,
)

fleet_commands = Commands()


@fleet_commands.command()
def tasks(dsn: DsnOption = None, schema: SchemaOption = None, as_json: JsonOption = False) -> None:
    """List each task's registered defaults: queue, priority, attempts.

    Each task's latest started worker registered them. A job enqueued without
    a queue, priority or max_attempts of its own gets these, whether it came
    from Task.enqueue, pgq.enqueue by name, or SQL.
    """
    with database(dsn, schema) as (conn, schema_name):
        found = admin.registered_tasks(conn, schema=schema_name)
    if as_json:
        print_json([dataclasses.asdict(task) for task in found])
        return
    table = Table(title="pgq tasks")
    for column in ("task", "queue", "priority", "max attempts", "timeout", "registered by", "at"):
        table.add_column(
            column, justify="right" if column in ("priority", "max attempts") else "left"
        )
    for task in found:
        timeout = "" if task.timeout_seconds is None else f"{task.timeout_seconds:g}s"
        table.add_row(
            escape(task.task), escape(task.queue), str(task.priority), str(task.max_attempts),
            timeout, escape(task.registered_by), ago(task.registered_at),
        )  # fmt: skip
    if not found:
        table.caption = "no task registered: start a worker (pgq work APP)"
    out.print(table)


@fleet_commands.command()
def workers(
    dsn: DsnOption = None, schema: SchemaOption = None, as_json: JsonOption = False
) -> None:
    """List the live workers and what each one serves and runs.

    Host, pid, pgq version, queues, tasks, jobs running, started, last seen. A
    worker that stops cleanly leaves the list at once; one that vanished
    (killed, cut off) leaves it when its lease runs out.
    """
    with database(dsn, schema) as (conn, schema_name):
        found = admin.live_workers(conn, schema=schema_name)
    if as_json:
        print_json([dataclasses.asdict(worker) for worker in found])
        return
    table = Table(title="pgq workers")
    for column in ("name", "host", "pid", "version", "queues", "tasks", "running", "started",
                   "last seen"):  # fmt: skip
        table.add_column(column, justify="right" if column in ("pid", "running") else "left")
    for worker in found:
        table.add_row(
            escape(worker.name), escape(worker.host), str(worker.pid), escape(worker.version),
            escape(", ".join(worker.queues) if worker.queues else "all"),
            escape(", ".join(worker.tasks)), f"{worker.running}/{worker.concurrency}",
            ago(worker.started_at), ago(worker.last_seen_at),
        )  # fmt: skip
    if not found:
        table.caption = "no live worker"
    out.print(table)
