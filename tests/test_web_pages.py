"""The dashboard's pages over real HTTP: what they show, what a confirmation counts, and the
error pages. The browser test (test_web_browser.py) clicks through them in Chromium."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

import pgq
from pgq.worker.registration import Registration
from pgq.worker.scheduler import Scheduler
from seeding import Conn, job_statuses, seed_job


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def browser(dsn: str, serve: Callable[..., str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve(dsn), timeout=10) as client:
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found
    return found.group(1)


def test_the_overview_shows_each_queues_counts_and_the_hours_chart(
    browser: httpx.Client, db: Conn
) -> None:
    seed_job(db, queue="emails", due_in=-5)
    seed_job(db, "dead", queue="payments", finished_ago=30)
    for _ in range(3):
        seed_job(db, "succeeded", queue="emails", finished_ago=0)

    page = browser.get("/").text
    fragment = browser.get("/fragments/queues").text

    assert 'href="/dead?queue=payments">1</a>' in page
    assert "4 in the hour, 1 dead" in page
    assert page.count("<rect") == 2 * 60
    assert "<html" not in fragment and 'href="/jobs?queue=emails"' in fragment


def test_a_bulk_confirmation_counts_only_the_jobs_the_action_applies_to(
    browser: httpx.Client, db: Conn
) -> None:
    dead = [seed_job(db, "dead") for _ in range(2)]
    queued = seed_job(db)
    csrf = csrf_of(browser.get("/jobs").text)

    page = browser.post("/actions/confirm", data={
        "csrf_token": csrf, "action": "requeue", "ids": [*dead, queued], "back": "/jobs",
    })  # fmt: skip

    assert page.status_code == 200
    assert "Requeue 2 jobs?" in page.text
    assert "This will touch <strong>2</strong> rows" in page.text
    assert "The other 1 are left as they are." in page.text
    assert set(job_statuses(db).values()) == {"dead", "queued"}  # asking changed nothing


def test_a_bulk_delete_warns_it_cannot_be_undone_and_deletes_only_finished_jobs(
    browser: httpx.Client, db: Conn
) -> None:
    dead = seed_job(db, "dead")
    queued = seed_job(db)
    csrf = csrf_of(browser.get("/dead").text)
    form = {"csrf_token": csrf, "action": "delete", "ids": [dead, queued], "back": "/dead"}

    asked = browser.post("/actions/confirm", data=form)
    done = browser.post("/actions/run", data=form)

    assert "cannot be brought back" in asked.text
    assert done.status_code == 303 and done.headers["location"] == "/dead?done=delete&count=1"
    assert job_statuses(db) == {queued: "queued"}
    assert "1 job deleted" in browser.get(done.headers["location"]).text


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/jobs/999999", 404, "no job with id 999999"),
        ("/nowhere", 404, "Not Found"),
        ("/jobs?status=finished", 422, "unknown status &#39;finished&#39;"),
        ("/jobs?queue=%00", 422, "queue must be text without NUL"),
    ],
)
def test_bad_requests_get_an_error_page_that_says_why(
    browser: httpx.Client, path: str, status: int, words: str
) -> None:
    page = browser.get(path)

    assert page.status_code == status
    assert words in page.text and "<html" in page.text


def test_a_job_page_escapes_what_a_producer_wrote(browser: httpx.Client, db: Conn) -> None:
    job_id = seed_job(db, "dead", args={"name": "<script>alert(1)</script>"},
                      last_error="<img src=x onerror=alert(2)>")  # fmt: skip

    page = browser.get(f"/jobs/{job_id}").text

    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "<img src=x" not in page


def test_an_unknown_bulk_action_is_refused_with_a_page_naming_the_actions(
    browser: httpx.Client, db: Conn
) -> None:
    dead = seed_job(db, "dead")
    csrf = csrf_of(browser.get("/dead").text)

    page = browser.post("/actions/run", data={"csrf_token": csrf, "action": "explode",
                                              "ids": [dead], "back": "/dead"})  # fmt: skip

    assert page.status_code == 422
    assert "no bulk action &#39;explode&#39;: use requeue, cancel, retry_now, delete" in page.text
    assert job_statuses(db) == {dead: "dead"}


def test_a_job_page_shows_the_result_and_the_progress_a_handler_left(
    browser: httpx.Client, db: Conn
) -> None:
    done = seed_job(db, "succeeded", result={"width": 640}, progress={"step": 3, "of": 3})
    running = seed_job(db, "running", progress={"step": 1, "of": 3})

    finished = browser.get(f"/jobs/{done}").text
    midway = browser.get(f"/jobs/{running}").text
    fragment = browser.get(f"/fragments/jobs/{running}/progress").text

    assert '<pre class="result">{\n  &#34;width&#34;: 640\n}</pre>' in finished
    assert "&#34;step&#34;: 3" in finished
    assert "&#34;step&#34;: 1" in midway and "<h2>Result</h2>" not in midway
    assert 'data-live="/fragments/jobs/' in midway and "live.js" in midway
    assert "live.js" not in finished  # a finished job's page does not refresh
    assert "<html" not in fragment and "&#34;step&#34;: 1" in fragment


def test_cancelling_a_running_job_from_its_page_asks_first_then_cancels_it(
    browser: httpx.Client, db: Conn
) -> None:
    running = seed_job(db, "running")
    page = browser.get(f"/jobs/{running}").text
    assert f'action="/jobs/{running}/cancel"' in page
    csrf = csrf_of(page)

    asked = browser.post(f"/jobs/{running}/cancel", data={"csrf_token": csrf})
    assert f"Cancel running job {running}?" in asked.text
    assert job_statuses(db) == {running: "running"}  # asking changed nothing

    done = browser.post(f"/jobs/{running}/cancel", data={"csrf_token": csrf, "confirmed": "yes"})
    assert done.status_code == 303
    assert job_statuses(db) == {running: "cancelled"}
    assert "1 job cancelled" in browser.get(done.headers["location"]).text


def test_cancelling_without_the_csrf_token_is_refused(browser: httpx.Client, db: Conn) -> None:
    running = seed_job(db, "running")
    browser.get("/jobs")  # the CSRF cookie, but no token in the form

    refused = browser.post(f"/jobs/{running}/cancel", data={"confirmed": "yes"})

    assert refused.status_code == 403
    assert job_statuses(db) == {running: "running"}


def test_the_workers_page_lists_live_workers_and_names_the_jobs_none_serves(
    browser: httpx.Client, db: Conn
) -> None:
    app = pgq.App()

    @app.task(name="send_receipt")
    def send_receipt() -> None: ...

    empty = browser.get("/workers").text
    Registration(schema="pgq", name="worker-a", tasks=tuple(app.tasks.values()),
                 queues=["emails"], concurrency=4, lease_seconds=30).register(db)  # fmt: skip
    pgq.enqueue(db, "send_reciept", queue="emails")  # the typo

    page = browser.get("/workers").text

    assert "No live worker" in empty
    row = re.search(r"<tr>\s*<td><code>worker-a</code></td>.*?</tr>", page, re.S)
    assert row, page
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(0), re.S)
    assert cells[1:4] == [socket.gethostname(), str(os.getpid()), pgq.__version__]
    assert ">emails</a>" in cells[4] and cells[5] == "send_receipt" and cells[6] == "0/4"
    assert 'href="/jobs?status=queued&amp;task=send_reciept&amp;queue=emails">send_reciept' in page


def test_the_schedules_page_shows_the_next_run_in_the_schedules_zone_and_the_last_job(
    browser: httpx.Client, db: Conn, dsn: str
) -> None:
    app = pgq.App()

    @app.periodic("0 3 * * *", tz="Europe/Berlin")
    def nightly_report() -> None: ...

    empty = browser.get("/schedules").text
    now = datetime.now(UTC)
    clock = [now - timedelta(days=1)]
    scheduler = Scheduler(dsn=dsn, schema="pgq", schedules=app.schedules, tasks=app.tasks,
                          clock=lambda: clock[0])  # fmt: skip
    while clock[0] < now:
        clock[0] += timedelta(seconds=scheduler.tick(db))
    [job_id] = job_statuses(db)

    page = browser.get("/schedules").text

    assert "No schedules" in empty
    assert "<code>0 3 * * *</code>" in page and "Europe/Berlin" in page
    tomorrow_or_today = re.findall(r"\d{4}-\d\d-\d\d 03:00 CE[S]?T", page)
    assert len(tomorrow_or_today) == 2  # the next run and the last tick, in Berlin time
    assert f'<a href="/jobs/{job_id}">{job_id}</a> <span class="status queued">' in page
