"""Who may do what in pgq web, over real HTTP: the token (bearer and login), no auth only on
loopback, CSRF, cross-site requests, read-only mode, the DSN's password never shown, the app
mounted under a prefix, and `pgq web` refusing to listen unprotected."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from starlette.applications import Starlette
from starlette.routing import Mount

from pgq.web import create_app
from seeding import Conn, job_statuses, seed_job

Serve = Callable[..., str]
TOKEN = "correct-horse-battery-staple-0123456789"


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def logged_in(base: str) -> httpx.Client:
    """A browser-like client, logged in to the dashboard with the token."""
    browser = httpx.Client(base_url=base, timeout=10)
    form = browser.get("/login")
    response = browser.post("/login", data={"token": TOKEN, "next": "/",
                                            "csrf_token": csrf_of(form.text)})  # fmt: skip
    assert response.status_code == 303
    return browser


# -- the token --------------------------------------------------------------------------------


def test_with_a_token_the_api_wants_it_as_a_bearer_and_health_stays_open(
    dsn: str, serve: Serve
) -> None:
    base = serve(dsn, token=TOKEN)

    assert httpx.get(base + "/api/stats").status_code == 401
    assert httpx.get(base + "/metrics").status_code == 401
    wrong = httpx.get(base + "/api/stats", headers={"Authorization": "Bearer nope"})
    right = httpx.get(base + "/api/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert right.status_code == 200
    assert httpx.get(base + "/health").status_code == 200


def test_a_post_without_the_token_writes_nothing(dsn: str, serve: Serve, db: Conn) -> None:
    base = serve(dsn, token=TOKEN)

    response = httpx.post(base + "/api/jobs", json={"task": "x"})

    assert response.status_code == 401
    assert job_statuses(db) == {}


def test_the_dashboard_sends_a_visitor_to_log_in_and_back_to_the_page_asked_for(
    dsn: str, serve: Serve
) -> None:
    base = serve(dsn, token=TOKEN)
    with httpx.Client(base_url=base, timeout=10) as browser:
        asked = browser.get("/dead?queue=emails")
        assert asked.status_code == 303
        assert asked.headers["location"].endswith("/login?next=%2Fdead%3Fqueue%3Demails")

        form = browser.get("/login")
        wrong = browser.post("/login", data={"token": "guess", "next": "/dead?queue=emails",
                                             "csrf_token": csrf_of(form.text)})  # fmt: skip
        assert wrong.status_code == 401 and "not the one" in wrong.text
        assert browser.get("/").status_code == 303

        right = browser.post("/login", data={"token": TOKEN, "next": "/dead?queue=emails",
                                             "csrf_token": csrf_of(form.text)})  # fmt: skip
        assert (right.status_code, right.headers["location"]) == (303, "/dead?queue=emails")
        session = browser.cookies["pgq_session"]
        assert browser.get("/dead?queue=emails").status_code == 200

        page = browser.get("/")
        browser.post("/logout", data={"csrf_token": csrf_of(page.text)})
        assert "pgq_session" not in browser.cookies
        assert browser.get("/").status_code == 303

    # A session cookie is signed: an edited one is refused.
    expires, _, mac = session.partition(".")
    forged = f"{int(expires) + 3600}.{mac}"
    with httpx.Client(base_url=base, cookies={"pgq_session": forged}) as forger:
        assert forger.get("/").status_code == 303


def test_login_never_sends_anyone_to_another_site(dsn: str, serve: Serve) -> None:
    base = serve(dsn, token=TOKEN)
    with httpx.Client(base_url=base, timeout=10) as browser:
        form = browser.get("/login")
        response = browser.post("/login", data={"token": TOKEN, "next": "//evil.example/x",
                                                "csrf_token": csrf_of(form.text)})  # fmt: skip

    assert response.headers["location"] == "/"


# -- no token: loopback only ------------------------------------------------------------------


def test_without_a_token_only_requests_addressed_to_loopback_are_answered(
    dsn: str, serve: Serve
) -> None:
    base = serve(dsn)

    assert httpx.get(base + "/api/stats").status_code == 200
    assert httpx.get(base + "/api/stats", headers={"Host": "localhost:1"}).status_code == 200
    # A DNS name an attacker points at 127.0.0.1 (DNS rebinding) gets nothing.
    rebound = httpx.get(base + "/api/stats", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403
    assert "loopback" in rebound.json()["error"]


def test_a_cross_site_post_is_refused_even_without_a_token(
    dsn: str, serve: Serve, db: Conn
) -> None:
    base = serve(dsn)

    from_elsewhere = httpx.post(
        base + "/api/jobs", json={"task": "x"}, headers={"Origin": "https://attacker.example"}
    )
    fetch_metadata = httpx.post(
        base + "/api/jobs", json={"task": "x"}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    sandboxed = httpx.post(base + "/api/jobs", json={"task": "x"}, headers={"Origin": "null"})
    same_origin = httpx.post(base + "/api/jobs", json={"task": "x"}, headers={"Origin": base})

    assert (from_elsewhere.status_code, fetch_metadata.status_code) == (403, 403)
    assert sandboxed.status_code == 403
    assert same_origin.status_code == 201
    assert len(job_statuses(db)) == 1


# -- CSRF -------------------------------------------------------------------------------------


def test_every_dashboard_form_needs_the_csrf_token_of_this_browser(
    dsn: str, serve: Serve, db: Conn
) -> None:
    dead = seed_job(db, "dead")
    base = serve(dsn, token=TOKEN)
    browser = logged_in(base)
    token = csrf_of(browser.get(f"/jobs/{dead}").text)

    missing = browser.post(f"/jobs/{dead}/requeue", data={})
    other_browser = logged_in(base)  # its own CSRF cookie: this token is not its
    other = other_browser.post(f"/jobs/{dead}/requeue", data={"csrf_token": token})
    other_browser.close()
    bulk = browser.post("/actions/run", data={"action": "delete", "ids": str(dead)})
    assert (missing.status_code, other.status_code, bulk.status_code) == (403, 403, 403)
    assert "expired or came from another site" in missing.text
    assert job_statuses(db) == {dead: "dead"}

    done = browser.post(f"/jobs/{dead}/requeue", data={"csrf_token": token})
    assert done.status_code == 303
    assert job_statuses(db) == {dead: "queued"}
    browser.close()


# -- read-only --------------------------------------------------------------------------------


def test_read_only_mode_refuses_every_change_and_shows_no_action(
    dsn: str, serve: Serve, db: Conn
) -> None:
    dead = seed_job(db, "dead")
    running = seed_job(db, "running")
    base = serve(dsn, read_only=True)

    enqueue = httpx.post(base + "/api/jobs", json={"task": "x"})
    requeue = httpx.post(base + f"/api/jobs/{dead}/requeue")
    cancel = httpx.post(base + f"/api/jobs/{running}/cancel")
    bulk = httpx.post(base + "/api/jobs/delete", json={"ids": [dead]})
    page = httpx.get(base + f"/jobs/{dead}")
    running_page = httpx.get(base + f"/jobs/{running}")
    dead_list = httpx.get(base + "/dead")

    assert {enqueue.status_code, requeue.status_code, cancel.status_code,
            bulk.status_code} == {403}  # fmt: skip
    assert "read-only" in enqueue.json()["error"]
    assert job_statuses(db) == {dead: "dead", running: "running"}
    assert page.status_code == 200 and "read-only" in page.text
    assert ">Requeue<" not in page.text and "Requeue…" not in dead_list.text
    assert ">Cancel<" not in running_page.text
    for path in ("/api/stats", "/api/workers", "/api/schedules", "/workers", "/schedules"):
        assert httpx.get(base + path).status_code == 200, path


# -- the DSN's password -----------------------------------------------------------------------


def test_the_dsns_password_appears_in_no_page_and_no_error(serve: Serve) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    dsn = make_conninfo(host="127.0.0.1", port=port, user="app", password="s3cret-pw",
                        dbname="app", connect_timeout=1)  # fmt: skip
    base = serve(dsn)

    with ThreadPoolExecutor(3) as pool:  # each waits out the pool's timeout: at once, not in turn
        answers = list(pool.map(lambda path: httpx.get(base + path, timeout=30),
                                ("/health", "/api/stats", "/")))  # fmt: skip

    assert [a.status_code for a in answers] == [503, 503, 503]
    assert all("s3cret-pw" not in a.text for a in answers)
    assert "unavailable" in answers[1].json()["error"]


# -- mounted under a prefix -------------------------------------------------------------------


def test_mounted_under_a_prefix_its_links_redirects_and_cookies_stay_under_it(
    dsn: str, serve: Serve, db: Conn
) -> None:
    dead = seed_job(db, "dead")
    host = Starlette(routes=[Mount("/ops/pgq", app=create_app(dsn, token=TOKEN))])
    base = serve(app=host)
    with httpx.Client(base_url=base, timeout=10) as browser:
        asked = browser.get("/ops/pgq/dead")
        assert asked.headers["location"].startswith("/ops/pgq/login?next=%2Fdead")
        form = browser.get("/ops/pgq/login")
        browser.post("/ops/pgq/login", data={"token": TOKEN, "next": "/dead",
                                             "csrf_token": csrf_of(form.text)})  # fmt: skip
        page = browser.get("/ops/pgq/dead")

        assert page.status_code == 200
        assert f'href="/ops/pgq/jobs/{dead}"' in page.text
        assert 'href="/ops/pgq/static/style.css"' in page.text
        api = browser.get(f"/ops/pgq/api/jobs/{dead}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert api.json()["id"] == dead


# -- `pgq web` --------------------------------------------------------------------------------

PGQ = [sys.executable, "-m", "pgq"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--host", "0.0.0.0"], {}, "refusing to serve 0.0.0.0 without a token"),
        (["--host", "192.168.1.5"], {}, "refusing to serve 192.168.1.5 without a token"),
        (["--token", "  "], {}, "the token is empty"),
        (["--log-level", "loud"], {}, "--log-level must be one of"),
    ],
)
def test_pgq_web_refuses_to_listen_unprotected_or_misconfigured(
    dsn: str, args: list[str], env: dict[str, str], message: str
) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "PGQ_WEB_TOKEN"}
    done = subprocess.run([*PGQ, "web", "--dsn", dsn, *args], capture_output=True, text=True,
                          env={**environment, **env}, timeout=60)  # fmt: skip

    assert done.returncode == 1
    assert message in done.stderr


def test_pgq_web_serves_with_the_token_from_the_environment_and_hides_the_password(
    dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    with_password = make_conninfo(dsn, password="never-shown-pw")  # trust auth ignores it
    log = tmp_path / "web.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [*PGQ, "web", "--dsn", with_password, "--host", "::1", "--port", str(port)],
            env={**os.environ, "PGQ_WEB_TOKEN": TOKEN}, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        base = f"http://[::1]:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(base + "/health")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert health.status_code == 200
        assert httpx.get(base + "/api/stats").status_code == 401
        authorized = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(base + "/api/stats", headers=authorized).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    assert "pgq web on http://::1:" in text
    assert "never-shown-pw" not in text


def test_no_page_can_be_framed_by_another_site_or_run_a_foreign_script(
    dsn: str, serve: Serve
) -> None:
    base = serve(dsn)

    for path in ("/", "/api/stats", "/login"):
        headers = httpx.get(base + path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
