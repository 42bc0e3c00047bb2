"""The dashboard's pages over real HTTP: what they show, what a confirmation counts, and the
error pages. The browser test (test_web_browser.py) clicks through them in Chromium."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest

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
