"""The dashboard: server-rendered pages over pgq.admin, readable without JavaScript.

Pages: the queues overview (live counts, the last hour's chart), the job list
(filters, search, keyset pages), a job's detail (args, result, progress, every
attempt's error and traceback), dead jobs, the live workers (and the queued jobs
none serves), the periodic schedules, login. Every change is a POST form with a
CSRF token; a bulk change, and cancelling a running job, first show a
confirmation page. static/live.js refreshes the overview's counts and a running
job's progress in place. NAV lists the pages in the header.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import psycopg
from jinja2 import pass_context
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from pgq import admin
from pgq.errors import InvalidJobError
from pgq.job import JobStatus
from pgq.schedule import local_time
from pgq.web.chart import activity_chart
from pgq.web.context import database, read_body
from pgq.web.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Access,
    local_path,
    safe_next,
)

PAGE_SIZE = 50
NAV = (
    ("overview", "Overview"),
    ("jobs", "Jobs"),
    ("dead", "Dead jobs"),
    ("workers", "Workers"),
    ("schedules", "Schedules"),
)
#: What the bulk buttons say, and what a confirmation asks.
ACTION_WORDS = {
    "requeue": ("Requeue", "requeued"),
    "cancel": ("Cancel", "cancelled"),
    "retry_now": ("Retry now", "made due now"),
    "delete": ("Delete", "deleted"),
}
#: Bulk buttons a list offers, by its status filter (None: unfiltered). Cancelling a
#: dead job is no edge of the state machine: the dead page offers delete instead.
LIST_ACTIONS: dict[str | None, tuple[str, ...]] = {
    None: ("requeue", "cancel", "retry_now", "delete"),
    "queued": ("cancel", "retry_now"),
    "running": (),
    "succeeded": ("delete",),
    "dead": ("requeue", "delete"),
    "cancelled": ("delete",),
}
SINGLE_ACTIONS = {"requeue": admin.requeue, "cancel": admin.cancel, "retry-now": admin.retry_now}

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


@pass_context
def _url(context: Any, name: str, query: dict[str, Any] | None = None, **params: Any) -> str:
    """A path inside the app (under its mount prefix), with a query string of non-empty values."""
    request: Request = context["request"]
    path = request.url_for(name, **params).path
    chosen = {key: value for key, value in (query or {}).items() if value not in (None, "")}
    return f"{path}?{urlencode(chosen)}" if chosen else path


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = (datetime.now(UTC) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds / size:.0f}{unit}"
            break
    else:
        text = f"{seconds:.0f}s"
    return f"in {text}" if future else f"{text} ago"


def _pretty_json(value: Any) -> str:
    """Args as indented JSON, for a <pre> (autoescaped there like any text)."""
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)


def _json_text(value: Any) -> str:
    """A result or progress as indented JSON: a string result shows its quotes."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s" if value < 60 else f"{value / 60:.1f} min"


templates.env.globals["url"] = _url
templates.env.globals["NAV"] = NAV
templates.env.filters["ago"] = _ago
templates.env.filters["seconds"] = _seconds
templates.env.filters["pretty_json"] = _pretty_json
templates.env.filters["json_text"] = _json_text
templates.env.filters["local"] = local_time


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    """A page, with the CSRF token its forms carry (and the cookie it goes with, if new)."""
    access: Access = request.app.state.access
    nonce = request.cookies.get(CSRF_COOKIE)
    fresh = not nonce
    if not nonce:
        nonce = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf_field": CSRF_FIELD,
            "csrf_token": access.csrf_token(nonce),
            "read_only": request.app.state.read_only,
            "auth": request.app.state.auth,
            "path": local_path(request.scope),
            **context,
        },
        status_code=status,
    )
    if fresh:
        _set_cookie(request, response, CSRF_COOKIE, nonce, max_age=None)
    return response


def _set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None
) -> None:
    # The session is Lax, so that a link to a job from a chat opens it logged in; a GET
    # changes nothing, and every POST needs the CSRF cookie, which is Strict.
    response.set_cookie(
        name, value, max_age=max_age, httponly=True,
        samesite="lax" if name == SESSION_COOKIE else "strict",
        secure=request.url.scheme == "https", path=request.scope.get("root_path") or "/",
    )  # fmt: skip


def error_page(request: Request, status: int, message: str) -> Response:
    return render(request, "error.html", {"status": status, "message": message}, status)


async def _form(request: Request) -> dict[str, list[str]]:
    """A POSTed form's fields, once its CSRF token is checked (else FormRefused)."""
    fields = parse_qs((await read_body(request)).decode(errors="replace"), keep_blank_values=True)
    access: Access = request.app.state.access
    if not access.csrf_ok(request, (fields.get(CSRF_FIELD) or [""])[0]):
        raise FormRefused()
    return fields


class FormRefused(Exception):
    """A form without a valid CSRF token: expired, or sent from another site."""


async def form_refused(request: Request, error: Exception) -> Response:
    return error_page(
        request, 403, "this form has expired or came from another site: reload the page and "
        "try again",
    )  # fmt: skip


def _first(fields: dict[str, list[str]], name: str) -> str:
    return (fields.get(name) or [""])[0]


# -- pages ------------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    db = database(request)
    queues = await db.run(admin.queue_overview)
    minutes = await db.run(admin.activity, minutes=60)
    return render(request, "overview.html", {"queues": queues, "chart": activity_chart(minutes)})


async def queues_fragment(request: Request) -> Response:
    queues = await database(request).run(admin.queue_overview)
    return render(request, "_queues.html", {"queues": queues})


async def jobs(request: Request) -> Response:
    return await _job_list(request, request.query_params.get("status") or None, "jobs")


async def dead(request: Request) -> Response:
    return await _job_list(request, JobStatus.DEAD.value, "dead")


async def _job_list(request: Request, status: str | None, page: str) -> Response:
    params = request.query_params
    chosen = {
        "status": status,
        "queue": params.get("queue") or None,
        "task": params.get("task") or None,
        "q": params.get("q") or None,
    }
    cursor = params.get("cursor")
    before_id = int(cursor) if cursor and cursor.isascii() and cursor.isdigit() else None
    found = await database(request).run(
        admin.list_jobs, status=status, queue=chosen["queue"], task=chosen["task"],
        search=chosen["q"], before_id=before_id or None, limit=PAGE_SIZE,
    )  # fmt: skip
    return render(request, "jobs.html", {
        "page": page,
        "jobs": found,
        "filters": chosen,
        "statuses": [s.value for s in JobStatus],
        "actions": LIST_ACTIONS.get(status, ()),
        "words": ACTION_WORDS,
        "next_cursor": found[-1].id if len(found) == PAGE_SIZE else None,
        "done": _done(request),
    })  # fmt: skip


def _done(request: Request) -> str | None:
    """The notice after an action ("3 jobs requeued"), from the redirect's query string."""
    action, count = request.query_params.get("done"), request.query_params.get("count", "")
    if action not in ACTION_WORDS or not count.isdigit():
        return None
    noun = "job" if count == "1" else "jobs"
    return f"{count} {noun} {ACTION_WORDS[action][1]}"


async def job(request: Request) -> Response:
    found = await database(request).run(admin.get_job, request.path_params["job_id"])
    return render(request, "job.html", {
        "job": found,
        "done": _done(request),
        "can": {
            "requeue": found.status in (JobStatus.DEAD, JobStatus.CANCELLED),
            "cancel": found.status in (JobStatus.QUEUED, JobStatus.RUNNING),
            "retry-now": found.status == JobStatus.QUEUED,
        },
    })  # fmt: skip


async def progress_fragment(request: Request) -> Response:
    found = await database(request).run(admin.get_job, request.path_params["job_id"])
    return render(request, "_progress.html", {"job": found})


async def act_on_job(request: Request) -> Response:
    fields = await _form(request)
    job_id, action = request.path_params["job_id"], request.path_params["action"]
    run = SINGLE_ACTIONS.get(action)
    if run is None:
        return error_page(request, 404, f"no action {action!r}")
    db = database(request)
    # Cancelling a running job stops a handler halfway: asked first, as a bulk action is.
    # A queued job is cancelled at once, as before.
    if action == "cancel" and _first(fields, "confirmed") != "yes":
        found = await db.run(admin.get_job, job_id)
        if found.status == JobStatus.RUNNING:
            return render(request, "confirm_cancel.html", {"job": found})
    await db.run(run, job_id)
    done = action.replace("-", "_")
    target = request.url_for("job", job_id=job_id).include_query_params(done=done, count=1)
    return RedirectResponse(target.path + "?" + target.query, status_code=303)


async def workers(request: Request) -> Response:
    found, unserved = await database(request).run(_fleet)
    return render(request, "workers.html", {"page": "workers", "workers": found,
                                            "unserved": unserved})  # fmt: skip


def _fleet(
    conn: psycopg.Connection[Any], *, schema: str
) -> tuple[list[admin.LiveWorker], list[admin.UnservedJobs]]:
    return admin.live_workers(conn, schema=schema), admin.unserved_jobs(conn, schema=schema)


async def schedules(request: Request) -> Response:
    found = await database(request).run(admin.schedules)
    return render(request, "schedules.html", {"page": "schedules", "schedules": found})


def _bulk_form(fields: dict[str, list[str]]) -> tuple[str, list[int], str]:
    """(action, ids, the page to go back to) of a bulk form; an unknown action is a 422."""
    action = _first(fields, "action")
    if action not in ACTION_WORDS:
        raise InvalidJobError(f"no bulk action {action!r}: use {', '.join(ACTION_WORDS)}")
    ids = [int(v) for v in fields.get("ids", []) if v.isascii() and v.isdigit()]
    return action, ids, safe_next(_first(fields, "back"))


async def confirm(request: Request) -> Response:
    """Step one of a bulk action: say how many of the selected jobs it would touch."""
    action, ids, back = _bulk_form(await _form(request))
    count = await database(request).run(admin.count_for_bulk, action, ids)
    statuses = " or ".join(s.value for s in admin.bulk_statuses(action))
    return render(request, "confirm.html", {
        "action": action, "words": ACTION_WORDS[action], "ids": ids, "count": count,
        "selected": len(ids), "statuses": statuses, "back": back,
    })  # fmt: skip


async def run_bulk(request: Request) -> Response:
    """Step two: do it, and go back to the list with a notice of how many were done."""
    action, ids, back = _bulk_form(await _form(request))
    done = await database(request).run(admin.act_on_jobs, action, ids)
    path, _, query = back.partition("?")
    kept = {k: v for k, v in parse_qs(query).items() if k not in ("done", "count")}
    query = urlencode({**kept, "done": action, "count": len(done)}, doseq=True)
    root = request.scope.get("root_path", "")
    return RedirectResponse(f"{root}{path}?{query}", status_code=303)


# -- login ------------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    return render(request, "login.html", {"next": safe_next(request.query_params.get("next", "/"))})


async def login(request: Request) -> Response:
    fields = await _form(request)
    access: Access = request.app.state.access
    destination = safe_next(_first(fields, "next"))
    if access.token is None:
        return RedirectResponse(request.scope.get("root_path", "") + destination, 303)
    if not access.token_matches(_first(fields, "token")):
        return render(request, "login.html", {"next": destination, "wrong": True}, 401)
    response = RedirectResponse(request.scope.get("root_path", "") + destination, 303)
    _set_cookie(request, response, SESSION_COOKIE, access.new_session(), SESSION_SECONDS)
    return response


async def logout(request: Request) -> Response:
    await _form(request)
    response = RedirectResponse(request.url_for("login").path, 303)
    response.delete_cookie(SESSION_COOKIE, path=request.scope.get("root_path") or "/")
    return response


ROUTES = [
    Route("/", overview, name="overview"),
    Route("/fragments/queues", queues_fragment, name="queues_fragment"),
    Route("/jobs", jobs, name="jobs"),
    Route("/dead", dead, name="dead"),
    Route("/jobs/{job_id:int}", job, name="job"),
    Route("/fragments/jobs/{job_id:int}/progress", progress_fragment, name="progress_fragment"),
    Route("/workers", workers, name="workers"),
    Route("/schedules", schedules, name="schedules"),
    Route("/jobs/{job_id:int}/{action:str}", act_on_job, methods=["POST"], name="act_on_job"),
    Route("/actions/confirm", confirm, methods=["POST"], name="confirm"),
    Route("/actions/run", run_bulk, methods=["POST"], name="run_bulk"),
    Route("/login", login_form, methods=["GET"], name="login"),
    Route("/login", login, methods=["POST"], name="login_submit"),
    Route("/logout", logout, methods=["POST"], name="logout"),
]
