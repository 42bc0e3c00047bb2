"""Django's tasks framework on pgq, with the small project in tests/django_project.

In this process, Django is set up once, on a database of this module's (the settings read
``$PGQ_DSN``), and migrated with ``manage.py migrate``'s own code; the tests then enqueue through
views, ``Task.enqueue`` and ``aenqueue`` and read results back. ``manage.py`` runs as a
subprocess for the migrations forth and back and for ``pgq_work``, as a user runs them.
On Python 3.11 this is Django 5.2 with the django-tasks backport; tests/test_django6.py runs
the same project on Django 6.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

import pgq
import pgq.migrate
from conftest import Databases
from seeding import seed_job
from worker_helpers import wait_until

PROJECT = Path(__file__).resolve().parent / "django_project"
RUN_SECONDS = 60.0


def manage(dsn: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` in the test project, on ``dsn``'s database."""
    env = {**os.environ, "PGQ_DSN": dsn}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT, env=env, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="module")
def django_dsn(databases: Databases) -> Iterator[str]:
    """Django set up in this process on an empty database of the module's, then migrated."""
    name = databases.create()
    dsn = databases.dsn(name)
    sys.path.insert(0, str(PROJECT))
    saved = os.environ.get("PGQ_DSN")
    os.environ["PGQ_DSN"] = dsn
    os.environ["DJANGO_SETTINGS_MODULE"] = "shopsite.settings"
    try:
        import django
        from django.core.management import call_command

        django.setup()  # reads the settings, and so $PGQ_DSN, now
        call_command("migrate", verbosity=0)
    finally:
        # Read once: the subprocesses other tests start must not inherit them.
        os.environ.pop("DJANGO_SETTINGS_MODULE")
        if saved is None:
            os.environ.pop("PGQ_DSN")
        else:
            os.environ["PGQ_DSN"] = saved
    yield dsn
    from django.db import connections

    connections.close_all()
    databases.drop_later(name)


def jobs(dsn: str, condition: str = "true", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            f"SELECT id, task, args, queue, priority, run_at, status::text AS status "  # noqa: S608
            f"FROM pgq.jobs WHERE {condition} ORDER BY id",
            params,
        ).fetchall()


# -- manage.py migrate -----------------------------------------------------------------------


def test_migrate_creates_pgq_schema_and_migrating_to_zero_drops_it(
    make_dsn: Callable[..., str],
) -> None:
    dsn = make_dsn(migrated=False)

    first = manage(dsn, "migrate")
    assert first.returncode == 0, first.stderr
    assert "Applying pgq.0001_pgq_schema... OK" in first.stdout
    assert pgq.migrate.current_revision(dsn) == pgq.migrate.head_revision()
    with psycopg.connect(dsn) as conn:
        pgq.enqueue(conn, "store.tasks.send_receipt", {"args": [1], "kwargs": {}})

    down = manage(dsn, "migrate", "pgq", "zero")
    assert down.returncode == 0, down.stderr
    assert pgq.migrate.current_revision(dsn) is None
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('pgq.jobs')").fetchone() == (None,)

    again = manage(dsn, "migrate")
    assert again.returncode == 0, again.stderr
    assert pgq.migrate.current_revision(dsn) == pgq.migrate.head_revision()


def test_the_newest_django_migration_brings_pgqs_newest_revision(django_dsn: str) -> None:
    import importlib
    import pkgutil

    import pgq.contrib.django.migrations as migrations

    newest = max(m.name for m in pkgutil.iter_modules(migrations.__path__))
    module = importlib.import_module(f"{migrations.__name__}.{newest}")

    # A new pgq revision needs a Django migration that runs it.
    assert module.REVISION == pgq.migrate.head_revision()


def test_migrate_leaves_a_schema_that_pgq_migrate_already_made(
    make_dsn: Callable[..., str],
) -> None:
    dsn = make_dsn()  # `pgq migrate` ran: the schema is at pgq's newest revision
    with psycopg.connect(dsn) as conn:
        job_id = pgq.enqueue(conn, "kept", {}).id

    done = manage(dsn, "migrate")

    assert done.returncode == 0, done.stderr
    assert pgq.migrate.current_revision(dsn) == pgq.migrate.head_revision()
    assert [job["id"] for job in jobs(dsn)] == [job_id]


# -- enqueue -----------------------------------------------------------------------------------


def test_a_view_writes_the_order_and_its_job_in_one_transaction(django_dsn: str) -> None:
    from django.test import Client

    response = Client().post("/orders/", {"customer": "ada"})

    assert response.status_code == 200, response.content
    body = response.json()
    [job] = jobs(django_dsn, "id = %s", (int(body["result_id"]),))
    assert job["task"] == "store.tasks.send_receipt"
    assert job["args"] == {"args": [body["order"]], "kwargs": {"greeting": "Hello"}}
    assert (job["queue"], job["status"]) == ("default", "queued")
    with psycopg.connect(django_dsn) as conn:
        row = conn.execute("SELECT customer FROM store_order WHERE id = %s", [body["order"]])
        assert row.fetchone() == ("ada",)


def test_a_view_whose_transaction_rolls_back_enqueues_nothing(django_dsn: str) -> None:
    from django.test import Client

    before = len(jobs(django_dsn))

    response = Client().post("/orders/", {"customer": "bob", "fail": "1"})

    assert response.status_code == 402
    assert len(jobs(django_dsn)) == before
    with psycopg.connect(django_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM store_order WHERE customer = 'bob'").fetchone()
    assert row == (0,)


def test_priority_queue_and_run_after_become_the_jobs_own(django_dsn: str) -> None:
    from store.tasks import shout

    later = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)

    lowest = shout.using(priority=-100).enqueue("a")
    highest = shout.using(priority=100, run_after=later).enqueue("b")
    default = shout.using(priority=0, queue_name="default").enqueue("c")

    by_id = {job["id"]: job for job in jobs(django_dsn, "task = 'store.tasks.shout'")}
    low, high, plain = (by_id[int(r.id)] for r in (lowest, highest, default))
    # Higher runs first in both, and Django's range fits in pgq's without a tie.
    assert low["priority"] < plain["priority"] < high["priority"]
    assert low["priority"] == 0  # pgq's lowest
    assert (low["queue"], high["queue"], plain["queue"]) == ("emails", "emails", "default")
    assert high["run_at"] == later
    assert highest.task.priority == 100 and highest.task.queue_name == "emails"


def test_an_enqueued_task_reads_back_ready_with_its_args(django_dsn: str) -> None:
    from store.tasks import send_receipt

    from pgq.contrib.django.compat import TaskResultStatus

    enqueued = send_receipt.enqueue(41, greeting="Hi")
    read = send_receipt.get_result(enqueued.id)

    for result in (enqueued, read):
        assert result.status == TaskResultStatus.READY
        assert (result.args, result.kwargs) == ([41], {"greeting": "Hi"})
        assert result.started_at is None and result.finished_at is None
        assert result.errors == [] and result.worker_ids == []
        with pytest.raises(ValueError, match="not finished"):
            result.return_value  # noqa: B018 (the property raises)
    assert read.enqueued_at == enqueued.enqueued_at
    assert enqueued.enqueued_at is not None
    assert abs(datetime.now(UTC) - enqueued.enqueued_at) < timedelta(minutes=1)


def test_aenqueue_and_aget_result_work_from_async_code(django_dsn: str) -> None:
    from store.tasks import send_receipt

    async def enqueue_and_read() -> tuple[str, list[Any]]:
        result = await send_receipt.aenqueue(7)
        read = await send_receipt.aget_result(result.id)
        return read.id, read.args

    result_id, args = asyncio.run(enqueue_and_read())

    assert args == [7]
    assert [job["task"] for job in jobs(django_dsn, "id = %s", (int(result_id),))] == [
        "store.tasks.send_receipt"
    ]


@pytest.mark.parametrize("result_id", ["999999999", "abc", "-1", "", "1.0", "99999999999999999999"])
def test_get_result_of_no_such_job_says_it_does_not_exist(django_dsn: str, result_id: str) -> None:
    from pgq.contrib.django.compat import TaskResultDoesNotExist, task_backends

    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(result_id)


def test_get_result_of_a_job_that_is_no_django_task_names_its_task(django_dsn: str) -> None:
    from pgq.contrib.django.compat import TaskResultDoesNotExist, task_backends

    with psycopg.connect(django_dsn) as conn:
        job_id = pgq.enqueue(conn, "send_email", {"to": "a@b.c"}).id

    with pytest.raises(TaskResultDoesNotExist, match="'send_email', which is no Django task"):
        task_backends["default"].get_result(str(job_id))


def test_args_django_cannot_store_are_refused_before_anything_is_written(
    django_dsn: str,
) -> None:
    from store.tasks import attempt_number, send_receipt

    before = len(jobs(django_dsn))

    with pytest.raises(TypeError):
        send_receipt.enqueue(datetime.now(UTC))  # type: ignore[arg-type]
    with pytest.raises(pgq.InvalidJobError, match="NUL"):
        attempt_number.enqueue("\x00")

    assert len(jobs(django_dsn)) == before


def test_bad_backend_options_are_refused_by_name(django_dsn: str) -> None:
    from pgq.contrib.django import PgqBackend

    with pytest.raises(pgq.ConfigError, match=r"unknown keys \['databse'\]"):
        PgqBackend("x", {"OPTIONS": {"databse": "default"}})
    with pytest.raises(pgq.ConfigError, match="max_attempts"):
        PgqBackend("x", {"OPTIONS": {"max_attempts": 0}})
    with pytest.raises(pgq.ConfigError, match="'a b' is not a pgq queue name"):
        PgqBackend("x", {"QUEUES": ["a b"]})
    with pytest.raises(pgq.ConfigError, match="schema"):
        PgqBackend("x", {"OPTIONS": {"schema": "Bad-Schema"}})


def test_a_queue_the_backend_does_not_allow_is_refused(django_dsn: str) -> None:
    from store.tasks import shout

    from pgq.contrib.django.compat import InvalidTask

    with pytest.raises(InvalidTask, match="reports"):
        shout.using(queue_name="reports")


def envoyer_reçu() -> None:  # a name Python takes and pgq's task names do not
    pass


def test_a_function_whose_path_is_no_pgq_task_name_is_refused_as_a_task(
    django_dsn: str,
) -> None:
    from pgq.contrib.django.compat import InvalidTask, task

    with pytest.raises(InvalidTask, match="envoyer_reçu' cannot be a pgq task name"):
        task(envoyer_reçu)


def test_the_system_checks_pass(django_dsn: str) -> None:
    from django.core.management import call_command

    call_command("check", fail_level="WARNING")


def test_a_dead_jobs_history_becomes_djangos_errors_and_worker_ids(django_dsn: str) -> None:
    from pgq.contrib.django.compat import TaskResultStatus, task_backends

    raised = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad\n'
    history: list[dict[str, Any]] = [
        {"attempt": 1, "worker": "w1", "error": "ValueError: bad", "traceback": raised},
        {"attempt": 2, "worker": "w2", "error": "worker lost: lease expired at 12:00"},
        {"at": "2030-01-01T00:00:00+00:00", "event": "requeued", "by": "ops"},
        {"attempt": 1, "worker": "w3", "error": "GiveUp: card refused"},
    ]
    with psycopg.connect(django_dsn) as conn:
        dead = seed_job(conn, "dead", task="store.tasks.send_receipt", attempts=1,
                        args={"args": [5], "kwargs": {}}, errors=history)  # fmt: skip
        cancelled = seed_job(conn, "cancelled", task="store.tasks.send_receipt")

    result = task_backends["default"].get_result(str(dead))

    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == [
        "builtins.ValueError", "pgq.errors.PgqError", "pgq.errors.GiveUp",
    ]  # fmt: skip
    assert result.errors[0].exception_class is ValueError
    assert result.errors[0].traceback == raised
    assert result.errors[1].traceback == "worker lost: lease expired at 12:00"
    # Attempts restarted at the requeue: one attempt now, by w3.
    assert result.worker_ids == ["w3"] and result.attempts == 1
    assert result.args == [5]
    # Django has no cancelled state: the task will not finish.
    assert task_backends["default"].get_result(str(cancelled)).status == TaskResultStatus.FAILED


# -- manage.py pgq_work ------------------------------------------------------------------------


def test_pgq_work_runs_the_projects_tasks_and_results_read_back(
    django_dsn: str, tmp_path: Path
) -> None:
    from django.db import transaction
    from store.models import Order
    from store.tasks import OrderMissing, attempt_number, send_receipt, shout

    from pgq.contrib.django.compat import TaskResultStatus

    with transaction.atomic():
        order = Order.objects.create(customer="cy")
        sent = send_receipt.enqueue(order.id)
    missing = send_receipt.enqueue(10**9)
    shouted = shout.enqueue("hey")
    counted = attempt_number.enqueue("first")
    ids = [int(r.id) for r in (sent, missing, shouted, counted)]

    log = tmp_path / "worker.log"
    env = {**os.environ, "PGQ_DSN": django_dsn, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "pgq_work", "--processes", "2", "-c", "2"],
            cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(
            lambda: all(j["status"] in ("succeeded", "dead")
                        for j in jobs(django_dsn, "id = ANY(%s)", (ids,))),
            RUN_SECONDS, lambda: log.read_text(),
        )  # fmt: skip
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    done = send_receipt.get_result(sent.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    returned = done.return_value
    assert returned is not None and returned["text"] == "Thanks, cy!"
    # A child of the supervisor ran it, with Django set up there too.
    assert returned["pid"] != worker.pid
    assert done.started_at is not None and done.finished_at is not None
    assert done.enqueued_at is not None
    assert done.enqueued_at <= done.started_at <= done.finished_at
    assert done.attempts == 1
    order.refresh_from_db()
    assert order.receipt_sent

    failed = send_receipt.get_result(missing.id)
    assert failed.status == TaskResultStatus.FAILED
    [error] = failed.errors
    assert error.exception_class is OrderMissing
    assert "no order 1000000000" in error.traceback
    # The worker that ran the attempt, as it named itself when it started.
    assert failed.worker_ids[0] and f"worker {failed.worker_ids[0]} started" in log.read_text()
    with pytest.raises(ValueError, match="failed"):
        failed.return_value  # noqa: B018 (the property raises)

    # (typed as the coroutine the function returns; the worker awaited it)
    assert cast(Any, shout.get_result(shouted.id).return_value) == "HEY"
    context = attempt_number.get_result(counted.id).return_value
    assert context == {"label": "first", "attempt": 1, "id": counted.id}


def test_pgq_work_names_a_backend_that_is_not_pgqs(django_dsn: str) -> None:
    done = manage(django_dsn, "pgq_work", "--backend", "nope")

    assert done.returncode == 1
    assert "CommandError: no task backend 'nope' in settings.TASKS" in done.stderr
    assert "Traceback" not in done.stderr


def test_pgq_work_help_shows_pgq_works_options(django_dsn: str) -> None:
    done = manage(django_dsn, "pgq_work", "--help")

    assert done.returncode == 0, done.stderr
    assert "--backend ALIAS" in done.stdout
    assert "--processes" in done.stdout and "--concurrency" in done.stdout


def test_pgq_work_passes_bad_options_to_pgq_works_own_errors(django_dsn: str) -> None:
    started = time.monotonic()
    done = manage(django_dsn, "pgq_work", "--processes", "0")

    assert done.returncode != 0
    assert "--processes must be >= 1" in done.stdout + done.stderr
    assert time.monotonic() - started < 60
