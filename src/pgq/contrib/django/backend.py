"""``PgqBackend``: Django's tasks framework enqueueing into pgq.

Configured in settings::

    TASKS = {
        "default": {
            "BACKEND": "pgq.contrib.django.PgqBackend",
            "QUEUES": [],  # any queue; Django's default allows only "default"
            "OPTIONS": {"database": "default", "schema": "pgq", "max_attempts": 5},
        }
    }

A Django task becomes a pgq job of task ``<module>.<function>`` (its
``module_path``), with args ``{"args": [...], "kwargs": {...}}``. The job is written
on Django's own connection, in the transaction Django has open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from pgq.admin import JobDetail, get_job
from pgq.config import resolve_schema
from pgq.contrib.django import database
from pgq.contrib.django.compat import (
    TASK_MIN_PRIORITY,
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    normalize_json,
    task_enqueued,
)
from pgq.contrib.django.results import task_result
from pgq.enqueue import enqueue
from pgq.errors import ConfigError, JobNotFoundError, shown
from pgq.job import DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_LIMIT, MAX_JOB_ID, QUEUE_NAME, TASK_NAME

P = ParamSpec("P")
T = TypeVar("T")

OPTION_NAMES = frozenset({"database", "schema", "max_attempts"})
#: Django's priorities run from -100 to 100, pgq's from 0 up (higher first, both): a
#: Django priority p is pgq priority p + 100, so Django's default 0 is pgq's 100.
PRIORITY_OFFSET = -TASK_MIN_PRIORITY
_RESULT_ID = re.compile(r"[0-9]{1,19}\Z")


def pgq_priority(django_priority: int) -> int:
    return django_priority + PRIORITY_OFFSET


class PgqBackend(BaseTaskBackend):
    """Django's tasks, run by pgq workers (``manage.py pgq_work``)."""

    supports_defer = True  # run_after is pgq's run_at
    supports_async_task = True  # an async def task runs on the worker's event loop
    supports_get_result = True  # from any process: the job row keeps the result
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options: Mapping[str, Any] = self.options
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise ConfigError(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {unknown}: "
                f"pgq's backend takes {sorted(OPTION_NAMES)}"
            )
        self.database: str = options.get("database", "default")
        self.schema = resolve_schema(options.get("schema"))
        self.max_attempts: int = options.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
        if type(self.max_attempts) is not int or not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ConfigError(
                f"TASKS[{alias!r}]['OPTIONS']['max_attempts'] must be an int from 1 to "
                f"{MAX_ATTEMPTS_LIMIT}, got {shown(self.max_attempts)}"
            )
        for queue in self.queues:
            if not QUEUE_NAME.match(queue):
                raise ConfigError(
                    f"TASKS[{alias!r}]['QUEUES']: {queue!r} is not a pgq queue name: use 1 "
                    "to 128 letters, digits, '_', '.', ':' or '-'"
                )

    def validate_task(self, task: Task[Any, Any]) -> None:
        super().validate_task(task)
        if not TASK_NAME.match(task.module_path):
            raise InvalidTask(
                f"{task.module_path!r} cannot be a pgq task name: use 1 to 200 letters, "
                "digits, '_', '.', ':' or '-'"
            )
        if not QUEUE_NAME.match(task.queue_name):
            raise InvalidTask(
                f"queue {task.queue_name!r} is not a pgq queue name: use 1 to 128 letters, "
                "digits, '_', '.', ':' or '-'"
            )

    def enqueue(
        self,
        task: Task[P, T],
        args: P.args,  # type: ignore[valid-type]
        kwargs: P.kwargs,  # type: ignore[valid-type]
    ) -> TaskResult[T]:
        """Write the job in the transaction Django has open on the backend's database."""
        self.validate_task(task)
        # Django's own rule for what args may be (tuples become lists, bytes text),
        # before pgq's limits (size, depth, NUL) in enqueue.
        stored = {"args": normalize_json(list(args)), "kwargs": normalize_json(dict(kwargs))}
        conn = database.psycopg_connection(self.database)
        job_id = enqueue(
            conn, task.module_path, stored, schema=self.schema, queue=task.queue_name,
            priority=pgq_priority(task.priority), run_at=_aware(task.run_after),
            max_attempts=self.max_attempts,
        ).id  # fmt: skip
        # Read back in the same transaction: the result's times are the database's.
        result = task_result(get_job(conn, job_id, schema=self.schema), task, self.alias)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The job's state, read on Django's connection (TaskResultDoesNotExist if none)."""
        job = self._job(result_id)
        return task_result(job, self._task_of(job), self.alias)

    def _job(self, result_id: str) -> JobDetail:
        if not isinstance(result_id, str) or not _RESULT_ID.match(result_id):
            raise TaskResultDoesNotExist(f"{result_id!r} is not a pgq job id")
        if int(result_id) > MAX_JOB_ID:
            raise TaskResultDoesNotExist(f"no pgq job with id {result_id}")
        conn = database.psycopg_connection(self.database)
        try:
            return get_job(conn, int(result_id), schema=self.schema)
        except JobNotFoundError:
            raise TaskResultDoesNotExist(f"no pgq job with id {result_id}") from None

    def _task_of(self, job: JobDetail) -> Task[Any, Any]:
        """The Django task a job runs, with the queue and priority it was enqueued with."""
        from django.utils.module_loading import import_string

        try:
            task = import_string(job.task)
        except ImportError:
            task = None
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(
                f"pgq job {job.id} is of task {job.task!r}, which is no Django task here"
            )
        try:
            return task.using(queue_name=job.queue, priority=job.priority - PRIORITY_OFFSET)
        except InvalidTask:  # changed outside Django (an operator, plain pgq.enqueue)
            return task

    def check(self, **kwargs: Any) -> Iterable[Any]:
        from django.apps import apps
        from django.core import checks

        try:
            database.connection_wrapper(self.database)
        except ConfigError as error:
            yield checks.Error(str(error), id="pgq.E001")
        if not apps.is_installed("pgq.contrib.django"):
            yield checks.Error(
                f"task backend {self.alias!r} is pgq's, but 'pgq.contrib.django' is not in "
                "INSTALLED_APPS: `manage.py migrate` will not create pgq's schema, and "
                "`manage.py pgq_work` will not exist",
                id="pgq.E002",
            )


def _aware(run_after: datetime | None) -> datetime | None:
    """pgq needs an aware time; with USE_TZ = False Django's are naive, in TIME_ZONE."""
    if run_after is None or run_after.utcoffset() is not None:
        return run_after
    from django.utils import timezone

    return timezone.make_aware(run_after)
