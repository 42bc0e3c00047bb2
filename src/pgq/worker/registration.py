"""What a worker tells the fleet: its tasks' declared defaults, and that it is alive.

At start, on the connection that checked the schema and before the first claim,
one transaction stores the worker's task declarations in the task registry
(``pgq.task_defaults``), moves the queued jobs that left their queue or priority
to a task whose declaration changed, and adds the worker's row to the fleet's
list (``pgq.live_workers``). The heartbeat keeps that row fresh (``touch``), a
clean stop removes it (``remove``), and maintenance forgets workers that
vanished (``prune_vanished_workers``).

The latest started worker's declaration wins: in a rolling deploy the new
version's workers start last, so its defaults win without anyone deciding. A
worker that changes a stored declaration says so in its log, so that two
versions that disagree (one crash-looping, say) show up there.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from pgq.config import installed_version, wakeup_channel
from pgq.queries import query
from pgq.tasks import Task
from pgq.worker.settings import WorkerSettings

log = logging.getLogger("pgq.worker")

#: How long a vanished worker's row is kept past its lease, for `pgq workers` to be
#: read by whoever investigates (live_workers hides it at once).
KEEP_VANISHED_SECONDS = 3600.0

#: A task's declared defaults as register_tasks stores them (and lock_registered_tasks reads them).
_DECLARED = (
    "queue", "priority", "max_attempts", "timeout_seconds", "retry_base_seconds",
    "retry_cap_seconds",
)  # fmt: skip


def declared_defaults(task: Task) -> tuple[Any, ...]:
    """A task's defaults in the order of _DECLARED (seconds as floats: one array type each)."""
    timeout = None if task.timeout_seconds is None else float(task.timeout_seconds)
    return (
        task.queue, task.priority, task.max_attempts, timeout,
        float(task.retry.base_seconds), float(task.retry.cap_seconds),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Registration:
    """A worker's entry in the fleet's shared knowledge; its methods write it."""

    schema: str
    name: str
    tasks: tuple[Task, ...]
    queues: list[str] | None
    concurrency: int
    lease_seconds: float

    @classmethod
    def for_worker(cls, settings: WorkerSettings, tasks: Mapping[str, Task]) -> Registration:
        return cls(
            schema=settings.schema, name=settings.name,
            tasks=tuple(tasks[name] for name in sorted(tasks)),
            queues=sorted(settings.queues) if settings.queues else None,
            concurrency=settings.concurrency, lease_seconds=settings.lease_seconds,
        )  # fmt: skip

    def register(self, conn: psycopg.Connection[Any]) -> None:
        """Store this worker's task defaults and its row, in one transaction."""
        names = [task.name for task in self.tasks]
        with conn.transaction():
            locked = conn.execute(query("lock_registered_tasks", self.schema), {"names": names})
            previous = {row[0]: row[1:] for row in locked}
            declared = [declared_defaults(task) for task in self.tasks]
            columns = list(zip(*declared, strict=True))
            conn.execute(
                query("register_tasks", self.schema),
                {
                    "names": names, "worker": self.name, "queues": list(columns[0]),
                    "priorities": list(columns[1]), "max_attempts": list(columns[2]),
                    "timeouts_seconds": list(columns[3]), "retry_base_seconds": list(columns[4]),
                    "retry_cap_seconds": list(columns[5]),
                },
            )  # fmt: skip
            moved = [
                task.name
                for task, defaults in zip(self.tasks, declared, strict=True)
                if self._changed(task.name, defaults, previous.get(task.name))
            ]
            if moved:
                params = {"names": moved, "channel": wakeup_channel(self.schema)}
                rerouted = conn.execute(query("reroute_jobs", self.schema), params).fetchone()
                if rerouted and rerouted[0]:
                    log.info(
                        "moved %s queued jobs of %s to their task's new queue or priority",
                        rerouted[0], ", ".join(moved),
                    )  # fmt: skip
            conn.execute(query("register_worker", self.schema), self._row(running=0))

    def _changed(
        self, task: str, defaults: tuple[Any, ...], previous: tuple[Any, ...] | None
    ) -> bool:
        """Log what this declaration changes; True if queued jobs may have to move."""
        if previous is None:
            return True  # jobs enqueued before any worker registered it
        stored, registered_by = previous[:-1], previous[-1]
        changes = [
            f"{field} {old!r} -> {new!r}"
            for field, old, new in zip(_DECLARED, stored, defaults, strict=True)
            if old != new
        ]
        if changes:
            log.warning(
                "task %r: this worker's declaration replaces the one %s registered (%s); "
                "the latest started worker's declaration wins",
                task, registered_by, ", ".join(changes),
            )  # fmt: skip
        return stored[:2] != defaults[:2]  # queue or priority

    def _row(self, *, running: int) -> dict[str, Any]:
        return {
            "name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
            "version": installed_version(), "queues": self.queues,
            "tasks": [task.name for task in self.tasks], "concurrency": self.concurrency,
            "running": running, "lease_seconds": self.lease_seconds,
        }  # fmt: skip

    def touch(self, conn: psycopg.Connection[Any], running: int) -> None:
        """The heartbeat's part: alive now, with ``running`` jobs held."""
        params = {"name": self.name, "running": running}
        if conn.execute(query("touch_worker", self.schema), params).rowcount == 0:
            # Pruned while it could not reach the database: back on the list.
            conn.execute(query("register_worker", self.schema), self._row(running=running))

    def remove(self, conn: psycopg.Connection[Any]) -> None:
        """A clean stop: off the list at once, rather than after its lease."""
        conn.execute(query("remove_worker", self.schema), {"name": self.name})


def prune_vanished_workers(conn: psycopg.Connection[Any], schema: str) -> int:
    """Forget workers not seen for an hour past their lease; how many were."""
    params = {"keep_seconds": KEEP_VANISHED_SECONDS}
    return conn.execute(query("prune_workers", schema), params).rowcount
