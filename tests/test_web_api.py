"""pgq web's JSON API over real HTTP (uvicorn on a free port) against a real database:
enqueue and its refusals, reads and keyset pages, actions one by one and in bulk, stats,
health, metrics and the OpenAPI document."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from starlette.routing import Route

import pgq
from pgq.web import api
from pgq.worker.registration import Registration
from pgq.worker.scheduler import Scheduler
from seeding import Conn, fetch_job, job_statuses, seed_job

Serve = Callable[..., str]


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def client(dsn: str, serve: Serve) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve(dsn), timeout=10) as http:
        yield http


def job_count(db: Conn) -> int:
    row = db.execute("SELECT count(*) FROM pgq.jobs").fetchone()
    assert row is not None
    return int(row[0])


# -- POST /api/jobs ---------------------------------------------------------------------------


def test_post_creates_the_job_with_every_option_and_answers_201_with_it(
    client: httpx.Client, db: Conn
) -> None:
    response = client.post("/api/jobs", json={
        "task": "send_email", "args": {"to": "ada@example.com"}, "queue": "emails",
        "priority": 7, "run_at": "2031-05-01T09:30:00+02:00", "max_attempts": 3,
        "dedupe_key": "welcome:ada",
    })  # fmt: skip

    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    stored = fetch_job(db, job["id"])
    assert (stored["task"], stored["queue"], stored["priority"], stored["max_attempts"]) == (
        "send_email",
        "emails",
        7,
        3,
    )
    assert stored["args"] == {"to": "ada@example.com"} == job["args"]
    assert stored["run_at"].isoformat() == "2031-05-01T07:30:00+00:00"
    assert job["status"] == "queued" and job["dedupe_key"] == "welcome:ada"


def test_a_delay_schedules_the_job_that_many_seconds_ahead(client: httpx.Client, db: Conn) -> None:
    job = client.post("/api/jobs", json={"task": "later", "delay": 600}).json()

    stored = fetch_job(db, job["id"])
    assert 590 <= (stored["run_at"] - stored["created_at"]).total_seconds() <= 610


def test_a_dedupe_hit_answers_200_with_the_job_already_queued(client: httpx.Client) -> None:
    first = client.post("/api/jobs", json={"task": "sync", "dedupe_key": "account:7"})
    again = client.post("/api/jobs", json={"task": "sync", "dedupe_key": "account:7"})

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]


def test_the_idempotency_key_header_makes_a_retried_request_return_the_first_job(
    client: httpx.Client, db: Conn
) -> None:
    headers = {"Idempotency-Key": "order-1234-confirmation"}
    first = client.post("/api/jobs", json={"task": "confirm"}, headers=headers)
    retried = client.post("/api/jobs", json={"task": "confirm"}, headers=headers)

    assert (first.status_code, retried.status_code) == (201, 200)
    assert retried.json()["id"] == first.json()["id"]
    assert first.json()["dedupe_key"] == "order-1234-confirmation"
    assert job_count(db) == 1


DEEP: Any = {}
_level = DEEP
for _ in range(120):
    _level["x"] = {}
    _level = _level["x"]

BAD_JOBS: list[tuple[str, Any, dict[str, str], str | None, str]] = [
    # (case, body, headers, field named, words in the message)
    ("not JSON", b"{task: x}", {}, None, "not valid JSON"),
    ("an array", [{"task": "x"}], {}, None, "must be a JSON object"),
    ("NaN", b'{"task": "x", "priority": NaN}', {}, None, "NaN is not a JSON number"),
    ("no task", {"args": {}}, {}, "task", "task is required"),
    ("task not a string", {"task": 12}, {}, "task", "task must be a string"),
    ("task name with a space", {"task": "send email"}, {}, "task", "invalid task name"),
    ("args a list", {"task": "x", "args": [1]}, {}, "args", "args must be a JSON object"),
    ("args too deep", {"task": "x", "args": DEEP}, {}, "args", "nest more than"),
    ("queue name too long", {"task": "x", "queue": "q" * 129}, {}, "queue", "invalid queue"),
    ("priority a float", {"task": "x", "priority": 1.5}, {}, "priority", "must be an integer"),
    ("priority true", {"task": "x", "priority": True}, {}, "priority", "must be an integer"),
    ("priority negative", {"task": "x", "priority": -1}, {}, "priority", "between 0 and"),
    ("max_attempts zero", {"task": "x", "max_attempts": 0}, {}, "max_attempts", "between 1"),
    ("run_at naive", {"task": "x", "run_at": "2031-01-01T00:00:00"}, {}, "run_at",
     "needs a UTC offset"),
    ("run_at not a time", {"task": "x", "run_at": "tomorrow"}, {}, "run_at", "ISO 8601"),
    ("run_at past 9999", {"task": "x", "run_at": "9999-06-01T00:00:00+00:00"}, {}, "run_at",
     "must be from 1970"),
    ("run_at and delay", {"task": "x", "run_at": "2031-01-01T00:00:00Z", "delay": 5}, {},
     "run_at", "not both"),
    ("delay negative", {"task": "x", "delay": -5}, {}, "delay", "between 0 and"),
    ("delay a string", {"task": "x", "delay": "5m"}, {}, "delay", "number of seconds"),
    ("dedupe_key empty", {"task": "x", "dedupe_key": ""}, {}, "dedupe_key", "1 to 500"),
    ("dedupe_key a number", {"task": "x", "dedupe_key": 5}, {}, "dedupe_key", "a string"),
    ("an unknown field", {"task": "x", "limit_key": "a"}, {}, "limit_key", "unknown field"),
    ("header and dedupe_key differ", {"task": "x", "dedupe_key": "a"},
     {"Idempotency-Key": "b"}, "Idempotency-Key", "differ"),
    ("a body over 2 MiB", {"task": "x", "args": {"blob": "x" * (3 * 1024 * 1024)}}, {}, None,
     "over 2,097,152 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "headers", "field", "words"),
    [case[1:] for case in BAD_JOBS],
    ids=[case[0] for case in BAD_JOBS],
)
def test_bad_input_gets_a_422_naming_the_field_and_nothing_is_written(
    client: httpx.Client, db: Conn, body: Any, headers: dict[str, str], field: str | None,
    words: str,
) -> None:  # fmt: skip
    if isinstance(body, bytes):
        response = client.post("/api/jobs", content=body, headers=headers)
    else:
        response = client.post("/api/jobs", json=body, headers=headers)

    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert words in response.json()["error"]
    assert job_count(db) == 0


# -- reading ----------------------------------------------------------------------------------


def test_get_job_returns_its_args_and_every_attempts_error_and_404_for_none(
    client: httpx.Client, db: Conn
) -> None:
    dead = seed_job(db, "dead", args={"order": 12}, last_error="ValueError: bad card")

    job = client.get(f"/api/jobs/{dead}").json()
    missing = client.get("/api/jobs/999999")

    assert job["status"] == "dead" and job["args"] == {"order": 12}
    assert [entry["error"] for entry in job["errors"]] == ["ValueError: bad card"] * 5
    assert missing.status_code == 404 and "no job with id 999999" in missing.json()["error"]
    assert client.get(f"/api/jobs/{2**63}").status_code == 404  # past bigint: no such job
    not_an_id = client.get("/api/jobs/twelve")  # the path of a bulk action, which is a POST
    assert (not_an_id.status_code, not_an_id.json()["error"]) == (405, "Method Not Allowed")
    assert client.get("/api/nothing").json() == {"error": "Not Found", "field": None}


def test_get_job_returns_the_handlers_result_and_the_latest_progress(
    client: httpx.Client, db: Conn
) -> None:
    done = seed_job(db, "succeeded", result={"width": 640}, progress={"step": 3, "of": 3})
    running = seed_job(db, "running", progress={"step": 1, "of": 3})
    queued = seed_job(db)

    finished, midway, waiting = (client.get(f"/api/jobs/{i}").json()
                                 for i in (done, running, queued))  # fmt: skip

    assert (finished["result"], finished["progress"]) == ({"width": 640}, {"step": 3, "of": 3})
    assert (midway["status"], midway["result"], midway["progress"]) == (
        "running", None, {"step": 1, "of": 3})  # fmt: skip
    assert (waiting["result"], waiting["progress"]) == (None, None)


def test_the_list_pages_by_cursor_through_every_matching_job_once_newest_first(
    client: httpx.Client, db: Conn
) -> None:
    wanted = [seed_job(db, "dead", queue="emails") for _ in range(5)]
    seed_job(db, "dead", queue="images")
    seed_job(db, queue="emails")

    seen, cursor, pages = [], None, 0
    while True:
        params = {"status": "dead", "queue": "emails", "limit": "2"}
        page = client.get("/api/jobs", params={**params, **({"cursor": cursor} if cursor else {})})
        body = page.json()
        seen += [job["id"] for job in body["jobs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert seen == wanted[::-1]
    assert pages == 3


def test_the_list_searches_args_and_error_text(client: httpx.Client, db: Conn) -> None:
    by_args = seed_job(db, args={"email": "grace@example.com"})
    by_error = seed_job(db, "dead", last_error="TimeoutError: smtp.example.net")
    seed_job(db, args={"email": "alan@example.org"})

    def found(text: str) -> list[int]:
        return [job["id"] for job in client.get("/api/jobs", params={"q": text}).json()["jobs"]]

    assert found("grace@") == [by_args]
    assert found("example.net") == [by_error]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"status": "finished"}, None),
        ({"offset": "100"}, "offset"),
    ],
)
def test_bad_list_parameters_get_a_422_naming_them(
    client: httpx.Client, params: dict[str, str], field: str | None
) -> None:
    response = client.get("/api/jobs", params=params)

    assert response.status_code == 422
    assert response.json()["field"] == field
    if field is None:
        assert "unknown status 'finished'" in response.json()["error"]


# -- actions ----------------------------------------------------------------------------------


def test_requeue_cancel_and_retry_now_answer_with_the_job_afterwards_or_409(
    client: httpx.Client, db: Conn
) -> None:
    dead = seed_job(db, "dead")
    later = seed_job(db, due_in=3600)

    requeued = client.post(f"/api/jobs/{dead}/requeue")
    retried = client.post(f"/api/jobs/{later}/retry-now")
    cancelled = client.post(f"/api/jobs/{later}/cancel")
    refused = client.post(f"/api/jobs/{later}/retry-now")

    assert (requeued.status_code, requeued.json()["status"]) == (200, "queued")
    assert retried.status_code == 200
    due_after = datetime.fromisoformat(retried.json()["run_at"]) - datetime.now(UTC)
    assert due_after.total_seconds() < 60  # an hour ahead before
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert refused.status_code == 409 and "only queued jobs" in refused.json()["error"]
    assert client.post(f"/api/jobs/{dead}/explode").status_code == 404
    assert client.post("/api/jobs/999999/cancel").status_code == 404


def test_cancel_stops_a_running_job_and_a_finished_one_is_a_409(
    client: httpx.Client, db: Conn
) -> None:
    running = seed_job(db, "running")
    done = seed_job(db, "succeeded")

    cancelled = client.post(f"/api/jobs/{running}/cancel")
    refused = client.post(f"/api/jobs/{done}/cancel")

    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert cancelled.json()["errors"][-1]["event"] == "cancelled"
    assert refused.status_code == 409
    assert job_statuses(db) == {running: "cancelled", done: "succeeded"}


def test_a_bulk_cancel_leaves_running_jobs_alone_whether_chosen_by_id_or_by_filter(
    client: httpx.Client, db: Conn
) -> None:
    queued = [seed_job(db, queue="reports") for _ in range(2)]
    running = seed_job(db, "running", queue="reports")

    dry = client.post("/api/jobs/cancel", json={"ids": [*queued, running], "dry_run": True})
    by_ids = client.post("/api/jobs/cancel", json={"ids": [queued[0], running]})
    by_filter = client.post("/api/jobs/cancel", json={"filter": {"queue": "reports"}})

    assert dry.json()["count"] == 2
    assert by_ids.json()["ids"] == [queued[0]]
    assert by_filter.json()["ids"] == [queued[1]]
    assert job_statuses(db)[running] == "running"


def test_bulk_actions_by_ids_and_by_filter_with_a_dry_run_first(
    client: httpx.Client, db: Conn
) -> None:
    timeouts = [seed_job(db, "dead", task="charge", last_error="Timeout") for _ in range(3)]
    other = seed_job(db, "dead", task="charge", last_error="CardDeclined")
    queued = [seed_job(db, queue="reports", due_in=3600) for _ in range(2)]

    dry = client.post("/api/jobs/requeue",
                      json={"filter": {"error_pattern": "%timeout%"}, "dry_run": True})  # fmt: skip
    assert dry.json() == {"action": "requeue", "dry_run": True, "count": 3}
    assert job_statuses(db)[timeouts[0]] == "dead"

    requeued = client.post("/api/jobs/requeue", json={"filter": {"error_pattern": "%timeout%"}})
    cancelled = client.post("/api/jobs/cancel", json={"filter": {"queue": "reports"}})
    deleted = client.post("/api/jobs/delete", json={"ids": [other, queued[0], timeouts[0]]})

    assert requeued.json()["ids"] == timeouts
    assert cancelled.json() == {"action": "cancel", "count": 2, "ids": queued}
    assert deleted.json()["ids"] == [other, queued[0]]  # the requeued one is not finished
    assert sorted(job_statuses(db)) == sorted([*timeouts, queued[1]])


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/jobs/requeue", {"ids": [1], "filter": {}}, None),
        ("/api/jobs/requeue", {}, None),
        ("/api/jobs/requeue", {"ids": "1,2"}, "ids"),
        ("/api/jobs/requeue", {"ids": [1, True]}, "ids"),
        ("/api/jobs/requeue", {"filter": {"status": "dead"}}, "status"),
        ("/api/jobs/requeue", {"filter": {"died_after": "yesterday"}}, "died_after"),
        ("/api/jobs/cancel", {"filter": {"error_pattern": "%x%"}}, "error_pattern"),
        ("/api/jobs/delete", {"filter": {"queue": "a"}}, "filter"),
        ("/api/jobs/cancel", {"ids": [1], "dry_run": "yes"}, "dry_run"),
    ],
)
def test_bad_bulk_selections_get_a_422_and_change_nothing(
    client: httpx.Client, db: Conn, path: str, body: Any, field: str | None
) -> None:
    dead = seed_job(db, "dead")

    response = client.post(path, json=body)

    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert job_statuses(db) == {dead: "dead"}


# -- stats, health, metrics, OpenAPI ----------------------------------------------------------


def test_stats_health_and_metrics_report_the_queues(client: httpx.Client, db: Conn) -> None:
    seed_job(db, queue="emails", due_in=-5)
    seed_job(db, "dead", queue="emails")

    stats = client.get("/api/stats").json()
    metrics = client.get("/metrics").text

    assert stats["queues"][0]["queue"] == "emails"
    assert (stats["queues"][0]["due"], stats["queues"][0]["dead"]) == (1, 1)
    assert client.get("/health").json() == {"status": "ok"}
    assert 'pgq_queue_due_jobs{queue="emails"} 1.0' in metrics
    assert 'pgq_queue_dead_jobs{queue="emails"} 1.0' in metrics


def register_worker(db: Conn, name: str, queues: list[str] | None) -> None:
    """A worker's row as `pgq work` writes it at start (this process's host and pid)."""
    app = pgq.App()

    @app.task(name="send_receipt")
    def send_receipt() -> None: ...

    Registration(schema="pgq", name=name, tasks=tuple(app.tasks.values()), queues=queues,
                 concurrency=4, lease_seconds=30).register(db)  # fmt: skip


def test_stats_count_the_workers_alive_and_name_the_jobs_no_live_worker_serves(
    client: httpx.Client, db: Conn
) -> None:
    empty = client.get("/api/stats").json()
    register_worker(db, "worker-a", ["emails"])
    pgq.enqueue(db, "send_receipt", queue="emails")  # served
    pgq.enqueue(db, "send_reciept", queue="emails")  # the typo
    pgq.enqueue(db, "send_receipt", queue="images", delay=600)  # no worker serves the queue

    stats = client.get("/api/stats").json()

    assert (empty["workers_alive"], empty["unserved"]) == (0, [])
    assert stats["workers_alive"] == 1
    assert [(u["task"], u["queue"], u["due"], u["scheduled"]) for u in stats["unserved"]] == [
        ("send_receipt", "images", 0, 1),
        ("send_reciept", "emails", 1, 0),
    ]


def test_workers_lists_each_live_worker_with_what_it_serves(client: httpx.Client, db: Conn) -> None:
    register_worker(db, "worker-a", ["emails", "receipts"])
    register_worker(db, "worker-b", None)

    found = client.get("/api/workers").json()["workers"]

    assert [w["name"] for w in found] == ["worker-a", "worker-b"]
    first = found[0]
    assert (first["host"], first["pid"]) == (socket.gethostname(), os.getpid())
    assert (first["queues"], found[1]["queues"]) == (["emails", "receipts"], None)
    assert (first["tasks"], first["running"], first["concurrency"]) == (["send_receipt"], 0, 4)
    assert first["version"] == pgq.__version__
    seen = datetime.fromisoformat(first["last_seen_at"])
    assert abs((datetime.now(UTC) - seen).total_seconds()) < 60


def test_schedules_list_the_next_run_the_last_tick_and_its_jobs_status(
    client: httpx.Client, db: Conn, dsn: str
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    app = pgq.App()

    @app.periodic("0 3 * * *", tz="Europe/Berlin")
    def nightly_report() -> None: ...

    now = datetime.now(UTC)
    clock = [now - timedelta(days=1)]
    scheduler = Scheduler(dsn=dsn, schema="pgq", schedules=app.schedules, tasks=app.tasks,
                          clock=lambda: clock[0])  # fmt: skip
    while clock[0] < now:  # a day of the scheduler's wake-ups, on a clock it is given
        clock[0] += timedelta(seconds=scheduler.tick(db))

    [schedule] = client.get("/api/schedules").json()["schedules"]

    three_today = datetime.now(berlin).replace(hour=3, minute=0, second=0, microsecond=0)
    last = three_today if three_today <= datetime.now(berlin) else three_today - timedelta(1)
    assert (schedule["task"], schedule["cron"], schedule["tz"]) == (
        "nightly_report", "0 3 * * *", "Europe/Berlin")  # fmt: skip
    assert datetime.fromisoformat(schedule["last_tick"]) == last
    assert datetime.fromisoformat(schedule["next_run"]) == last + timedelta(days=1)
    assert schedule["last_job_status"] == "queued" and schedule["declared"] is True
    assert job_statuses(db) == {schedule["last_job_id"]: "queued"}


def test_health_is_503_when_the_schema_is_missing(empty_dsn: str, serve: Serve) -> None:
    response = httpx.get(serve(empty_dsn) + "/health")

    assert response.status_code == 503
    assert "run `pgq migrate`" in response.json()["error"]


def test_the_openapi_document_has_every_api_route_and_no_other(client: httpx.Client) -> None:
    document = client.get("/api/openapi.json").json()

    def spelled(route: Route) -> set[str]:
        path = route.path.replace(":int", "").replace(":str", "")
        if "{action}" not in path:
            return {path}
        actions = api.SINGLE_ACTIONS if "{job_id}" in path else api.ACTIONS
        return {path.replace("{action}", action) for action in actions}

    routed = {path for route in api.ROUTES for path in spelled(route)}
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == routed
