"""The dashboard in a real headless Chromium (Debian's, driven by Playwright), against a real
database and a real `pgq work`: an operator logs in, finds a dead job, reads its traceback,
requeues it and sees it succeed; cancels queued jobs in bulk through the confirmation; sees
the live worker, the jobs it does not serve and the schedules; watches a running job's
progress and cancels it.

Each main page is saved as a screenshot into docs/screenshots/, which docs/web.md shows.
Chromium comes from the system (/usr/bin/chromium; .ci/run installs Debian's package):
`playwright install` would download a browser of its own.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

import pgq
from pgq import admin
from seeding import Conn, job_statuses
from worker_helpers import REPO_ROOT, WorkerProcesses, wait_until

CHROMIUM = Path(os.environ.get("PGQ_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
TOKEN = "browser-test-token-4f1c9a"
WEB_APP = "tests.apps.web_app:app"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), (
        f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does), or set "
        "PGQ_TEST_CHROMIUM"
    )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    yield context.new_page()
    context.close()


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"web-{name}.png", full_page=True)


def log_in(page: Page, base: str) -> None:
    page.goto(base + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.get_by_label("Token").fill(TOKEN)
    shoot(page, "login")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Queues")).to_be_visible()


def test_an_operator_reads_a_dead_jobs_traceback_requeues_it_and_sees_it_succeed(
    dsn: str, db: Conn, serve: Callable[..., str], workers: WorkerProcesses, page: Page,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    fixed = tmp_path / "relay-fixed"
    monkeypatch.setenv("PGQ_TEST_RELAY_FIXED", str(fixed))  # the worker inherits it
    with db.transaction():
        job_id = pgq.enqueue(db, "send_receipt", {"order_id": 4217}, max_attempts=1).id
        for order in (4218, 4219):
            pgq.enqueue(db, "send_receipt", {"order_id": order}, queue="receipts", delay=3600)
    workers.start(dsn, "--concurrency", "2", app=WEB_APP)
    wait_until(lambda: job_statuses(db)[job_id] == "dead", 30, "the job never died")
    base = serve(dsn, token=TOKEN)

    log_in(page, base)
    expect(page.locator("#queues")).to_contain_text("default")
    shoot(page, "overview")

    page.get_by_role("link", name="Dead jobs").click()
    row = page.get_by_role("row").filter(has_text="send_receipt")
    expect(row).to_contain_text("mail relay refused the receipt for order 4217")
    shoot(page, "dead")

    row.get_by_role("link", name=str(job_id)).click()
    expect(page.get_by_role("heading", name=f"Job {job_id}")).to_contain_text("dead")
    traceback = page.locator("pre.traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("in deliver")
    expect(traceback).to_contain_text("ConnectionRefusedError: mail relay refused the receipt")
    shoot(page, "job")

    fixed.touch()  # the fix is deployed
    page.get_by_role("button", name="Requeue").click()
    expect(page.get_by_role("status")).to_have_text("1 job requeued")
    wait_until(lambda: job_statuses(db)[job_id] == "succeeded", 30, "the requeued job never ran")
    page.reload()
    expect(page.get_by_role("heading", name=f"Job {job_id}")).to_contain_text("succeeded")
    expect(page.locator("section.attempt").first).to_contain_text("requeued by")


def test_an_operator_cancels_queued_jobs_in_bulk_after_a_confirmation_with_the_count(
    dsn: str, db: Conn, serve: Callable[..., str], page: Page
) -> None:
    with db.transaction():
        later = [pgq.enqueue(db, "build_report", {"month": m}, queue="reports", delay=3600).id
                 for m in range(1, 5)]  # fmt: skip
    base = serve(dsn, token=TOKEN)
    log_in(page, base)

    page.goto(base + "/jobs?status=queued&queue=reports")
    for job_id in later[:3]:
        page.get_by_label(f"select job {job_id}").check()
    shoot(page, "jobs")
    page.get_by_role("button", name="Cancel…").click()

    expect(page.get_by_role("heading")).to_have_text("Cancel 3 jobs?")
    expect(page.locator(".confirm-count")).to_contain_text("This will touch 3 rows")
    shoot(page, "confirm")
    page.get_by_role("button", name="Yes, cancel 3").click()

    expect(page.get_by_role("status")).to_have_text("3 jobs cancelled")
    expect(page).to_have_url(re.compile(r"/jobs\?status=queued&queue=reports&done=cancel"))
    statuses = job_statuses(db)
    assert [statuses[j] for j in later] == ["cancelled", "cancelled", "cancelled", "queued"]
    expect(page.get_by_role("row")).to_have_count(2)  # the header and the one left queued


def test_the_pages_are_readable_without_javascript(
    dsn: str, db: Conn, serve: Callable[..., str], browser: Browser
) -> None:
    with db.transaction():
        pgq.enqueue(db, "build_report", {"month": 1}, queue="reports")
    base = serve(dsn)  # no token, on loopback
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()

    page.goto(base + "/")
    expect(page.locator("#queues")).to_contain_text("reports")
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_label("search").fill("build_rep")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("row").filter(has_text="build_report")).to_have_count(1)
    context.close()


def test_the_overviews_counts_refresh_by_themselves(
    dsn: str, db: Conn, serve: Callable[..., str], page: Page
) -> None:
    page.goto(serve(dsn) + "/")  # no token, on loopback
    expect(page.locator("#queues")).to_contain_text("No queued, running or dead jobs")

    with db.transaction():
        pgq.enqueue(db, "build_report", {"month": 1}, queue="month_end")

    # live.js fetches the queues' table every 5 s; no reload here.
    expect(page.locator("#queues")).to_contain_text("month_end", timeout=8000)


def test_an_operator_sees_the_live_worker_a_misspelt_tasks_jobs_and_the_schedules(
    dsn: str, db: Conn, serve: Callable[..., str], workers: WorkerProcesses, page: Page,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("PGQ_TEST_RELAY_FIXED", str(tmp_path / "relay-fixed"))
    worker = workers.start(dsn, "--concurrency", "2", app=WEB_APP)
    with db.transaction():
        pgq.enqueue(db, "send_reciept", {"order_id": 4220})  # the typo: no worker has it
    wait_until(lambda: bool(admin.live_workers(db) and admin.schedules(db)), 30,
               "the worker never registered and declared its schedule")  # fmt: skip
    base = serve(dsn, token=TOKEN)
    log_in(page, base)

    page.get_by_role("link", name="Workers").click()
    row = page.get_by_role("row").filter(has_text=socket.gethostname())
    expect(row).to_contain_text(str(worker.pid))
    expect(row).to_contain_text("send_receipt")
    expect(row).to_contain_text("0/2")
    expect(page.locator("table.unserved")).to_contain_text("send_reciept")
    shoot(page, "workers")

    page.get_by_role("link", name="Schedules").click()
    row = page.get_by_role("row").filter(has_text="nightly_report")
    expect(row).to_contain_text("0 3 * * *")
    expect(row).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d 03:00 CES?T"))  # Berlin time
    shoot(page, "schedules")


def test_an_operator_watches_a_running_jobs_progress_and_cancels_it(
    dsn: str, db: Conn, serve: Callable[..., str], workers: WorkerProcesses, page: Page,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("PGQ_TEST_RELAY_FIXED", str(tmp_path / "relay-fixed"))
    with db.transaction():
        job_id = pgq.enqueue(db, "export_rows", {"rows": 10_000}).id
    workers.start(dsn, app=WEB_APP)
    wait_until(lambda: pgq.get_job(db, job_id).progress is not None, 30, "it never ran")
    base = serve(dsn, token=TOKEN)
    log_in(page, base)

    page.goto(f"{base}/jobs/{job_id}")
    progress = page.locator("pre.progress")
    expect(progress).to_contain_text('"of": 10000')
    first = progress.inner_text()
    expect(progress).not_to_have_text(first, timeout=8000)  # live.js, every 5 s: no reload
    shoot(page, "job-running")

    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("heading")).to_have_text(f"Cancel running job {job_id}?")
    page.get_by_role("button", name=f"Yes, cancel job {job_id}").click()

    expect(page.get_by_role("status")).to_have_text("1 job cancelled")
    expect(page.get_by_role("heading", name=f"Job {job_id}")).to_contain_text("cancelled")
    assert job_statuses(db)[job_id] == "cancelled"
    expect(page.locator("section.attempt").first).to_contain_text("cancelled by")
