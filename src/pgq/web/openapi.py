"""The OpenAPI 3.1 document of the JSON API, served at /api/openapi.json.

Written out rather than generated from the handlers: Starlette has no schema
models, and the document is the contract a Go or Node producer codes against.
tests/test_web_api.py checks that every route is in it and every path in it routes.
"""

from __future__ import annotations

from typing import Any

from pgq.job import MAX_PRIORITY, JobStatus

_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "field": {"type": ["string", "null"], "description": "The refused field, if one."},
    },
    "required": ["error"],
}
_SUMMARY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "queue": {"type": "string"},
    "task": {"type": "string"},
    "status": {"type": "string", "enum": [s.value for s in JobStatus]},
    "priority": {"type": "integer"},
    "attempts": {"type": "integer"},
    "max_attempts": {"type": "integer"},
    "run_at": _TIME,
    "created_at": _TIME,
    "started_at": _NULLABLE_TIME,
    "finished_at": _NULLABLE_TIME,
    "locked_by": {"type": ["string", "null"]},
    "last_error": {"type": ["string", "null"]},
}
_JOB_DETAIL = {
    "type": "object",
    "properties": {
        **_SUMMARY_PROPERTIES,
        "args": {"type": ["object", "string"],
                 "description": "The args; their JSON text if Python cannot decode them."},
        "errors": {"type": "array", "items": {"type": "object"},
                   "description": "History, oldest first: each failed attempt (attempt, at, "
                   "worker, error, traceback) and each operator action (at, event, by)."},
        "locked_until": _NULLABLE_TIME,
        "dedupe_key": {"type": ["string", "null"]},
        "result": {"description": "What the handler returned (any JSON), once the job "
                   "succeeded; null before, or for a handler that returned None."},
        "progress": {"description": "The latest value the handler reported with "
                     "ctx.progress() (any JSON); null if none yet. Kept after the job ends."},
    },
}  # fmt: skip
_WORKER = {
    "type": "object",
    "description": "A worker seen within its lease (the view live_workers).",
    "properties": {
        "name": {"type": "string"},
        "host": {"type": "string"},
        "pid": {"type": "integer"},
        "version": {"type": "string", "description": "pgq's version in that worker."},
        "queues": {"type": ["array", "null"], "items": {"type": "string"},
                   "description": "The queues it serves; null: every queue."},
        "tasks": {"type": "array", "items": {"type": "string"}},
        "concurrency": {"type": "integer"},
        "running": {"type": "integer", "description": "Jobs it runs now."},
        "started_at": _TIME,
        "last_seen_at": _TIME,
    },
}  # fmt: skip
_UNSERVED = {
    "type": "object",
    "description": "Queued jobs of one task and queue that no live worker serves: a misspelt "
    "task, or a worker missing.",
    "properties": {
        "task": {"type": "string"},
        "queue": {"type": "string"},
        "due": {"type": "integer"},
        "scheduled": {"type": "integer"},
        "oldest_run_at": _TIME,
    },
}
_QUEUE = {
    "type": "object",
    "properties": {
        "queue": {"type": "string"},
        **{name: {"type": "integer"} for name in ("due", "scheduled", "running", "lease_expired",
                                                 "dead")},
        "lag_seconds": {"type": "number", "description": "Age of the oldest due job."},
        "last_died_at": _NULLABLE_TIME,
    },
}  # fmt: skip
_SCHEDULE = {
    "type": "object",
    "description": "A periodic schedule (the view schedule_status, and its next run).",
    "properties": {
        "id": {"type": "integer"},
        "task": {"type": "string"},
        "cron": {"type": "string"},
        "tz": {"type": "string"},
        "args": {"type": ["object", "string"]},
        "misfire": {"type": "string"},
        "ticked_through": _TIME,
        "last_tick": _NULLABLE_TIME,
        "last_job_id": {"type": ["integer", "null"]},
        "last_job_status": {"type": ["string", "null"],
                            "description": "null: no job yet, or it was pruned."},
        "declared_at": _TIME,
        "next_run": {**_NULLABLE_TIME, "description": "The next tick; null if the cron "
                     "never matches again or the time zone is unknown here."},
        "declared": {"type": "boolean", "description": "False: no running worker declared "
                     "it lately, so its ticks are not being made."},
    },
}  # fmt: skip
_NEW_JOB = {
    "type": "object",
    "required": ["task"],
    "additionalProperties": False,
    "properties": {
        "task": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,200}$"},
        "args": {"type": "object", "description": "Keyword arguments; at most 1 MiB of JSON."},
        "queue": {"type": "string", "default": "default"},
        "priority": {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY, "default": 0},
        "run_at": {**_TIME, "description": "When it may first run (with an offset)."},
        "delay": {"type": "number", "minimum": 0, "description": "Seconds from now; not with "
                  "run_at."},
        "max_attempts": {"type": "integer", "minimum": 1, "default": 5},
        "dedupe_key": {"type": "string", "maxLength": 500,
                       "description": "While a job with this key is queued or running, "
                       "enqueueing another returns that job (200) instead."},
    },
}  # fmt: skip
_SELECTION = {
    "type": "object",
    "description": 'Either "ids" or "filter". requeue filters dead jobs (task, queue, '
    "error_pattern as ILIKE, died_after, died_before); cancel and retry-now filter queued "
    "jobs (task, queue); delete takes ids only. dry_run counts, changes nothing.",
    "properties": {
        "ids": {"type": "array", "items": {"type": "integer"}},
        "filter": {"type": "object"},
        "dry_run": {"type": "boolean", "default": False},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _json(_ERROR, "No valid bearer token (when pgq web has one)."),
    "403": _json(_ERROR, "Read-only mode, or a cross-site request."),
}
_NOT_FOUND = {"404": _json(_ERROR, "No job with this id.")}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}


def openapi_document(server_url: str) -> dict[str, Any]:
    """The document, with ``server_url`` (where the app is mounted) as its server."""
    query = [
        {"name": name, "in": "query", "schema": {"type": "string"}, "description": text}
        for name, text in (
            ("status", "queued, running, succeeded, dead or cancelled"),
            ("queue", "Exact queue name."),
            ("task", "Exact task name."),
            ("q", "Search: the id, or text in the task, the args or the last error."),
            ("limit", "Page size, 1 to 500 (default 50)."),
            ("cursor", "The next_cursor of the page before: keyset paging, newest first."),
        )
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "pgq web API", "version": "1",
                 "description": "Enqueue and manage pgq jobs over HTTP. With a token, every "
                 "/api/ path and /metrics need `Authorization: Bearer <token>`."},
        "servers": [{"url": server_url}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/api/jobs": {
                "post": {
                    "summary": "Enqueue a job",
                    "parameters": [{"name": "Idempotency-Key", "in": "header",
                                    "schema": {"type": "string"},
                                    "description": "Used as the job's dedupe_key: a retried "
                                    "request returns the job the first one made while it is "
                                    "queued or running."}],
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": _NEW_JOB}}},
                    "responses": {
                        "201": _json(_JOB_DETAIL, "Created."),
                        "200": _json(_JOB_DETAIL, "A queued or running job held the dedupe "
                                     "key: that job."),
                        "422": _json(_ERROR, "Bad input; nothing was written."),
                        **_ERRORS,
                    },
                },
                "get": {
                    "summary": "List jobs, newest first",
                    "parameters": query,
                    "responses": {
                        "200": _json({"type": "object", "properties": {
                            "jobs": {"type": "array", "items": {
                                "type": "object", "properties": _SUMMARY_PROPERTIES}},
                            "next_cursor": {"type": ["string", "null"]}}}, "A page."),
                        "422": _json(_ERROR, "Bad query parameter."),
                        **_ERRORS,
                    },
                },
            },
            "/api/jobs/{job_id}": {
                "get": {"summary": "One job: its args, result, progress and error history",
                        "parameters": [_JOB_ID],
                        "responses": {"200": _json(_JOB_DETAIL, "The job."), **_NOT_FOUND,
                                      **_ERRORS}},
            },
            **{
                f"/api/jobs/{{job_id}}/{action}": {
                    "post": {"summary": summary, "parameters": [_JOB_ID],
                             "responses": {"200": _json(_JOB_DETAIL, "The job afterwards."),
                                           **_NOT_FOUND,
                                           "409": _json(_ERROR, "Its status refuses this."),
                                           **_ERRORS}},
                }
                for action, summary in (
                    ("requeue", "Requeue a dead or cancelled job"),
                    ("cancel", "Cancel a queued or running job (a running job's handler is "
                     "told to stop; what it returns is discarded)"),
                    ("retry-now", "Make a queued job due now"),
                )
            },
            **{
                f"/api/jobs/{action}": {
                    "post": {"summary": summary,
                             "requestBody": {"required": True, "content": {
                                 "application/json": {"schema": _SELECTION}}},
                             "responses": {"200": _json({"type": "object", "properties": {
                                 "action": {"type": "string"}, "count": {"type": "integer"},
                                 "ids": {"type": "array", "items": {"type": "integer"}}}},
                                 "What was done (or, with dry_run, would be)."),
                                 "422": _json(_ERROR, "Bad selection."), **_ERRORS}},
                }
                for action, summary in (
                    ("requeue", "Requeue dead jobs by id or filter"),
                    ("cancel", "Cancel queued jobs by id or filter (running ones are left "
                     "alone: cancel those one by one)"),
                    ("retry-now", "Make queued jobs due now, by id or filter"),
                    ("delete", "Delete finished jobs by id"),
                )
            },
            "/api/stats": {"get": {"summary": "Per queue: due, scheduled, running, "
                                   "lease_expired, lag_seconds, dead, last_died_at; the "
                                   "workers alive; the queued jobs no live worker serves",
                                   "responses": {"200": _json({"type": "object", "properties": {
                                       "queues": {"type": "array", "items": _QUEUE},
                                       "workers_alive": {"type": "integer"},
                                       "unserved": {"type": "array", "items": _UNSERVED},
                                   }}, "Queues and workers."), **_ERRORS}}},
            "/api/workers": {"get": {"summary": "The live workers, oldest first",
                                     "responses": {"200": _json({"type": "object", "properties": {
                                         "workers": {"type": "array", "items": _WORKER}}},
                                         "Workers."), **_ERRORS}}},
            "/api/schedules": {"get": {"summary": "The periodic schedules: next run, last "
                                       "tick and its job's status",
                                       "responses": {"200": _json({"type": "object",
                                           "properties": {"schedules": {"type": "array",
                                                                        "items": _SCHEDULE}}},
                                           "Schedules."), **_ERRORS}}},
            "/api/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": _json({"type": "object"}, "OpenAPI 3.1.")}}},
            "/health": {"get": {"summary": "Database reachable and schema current",
                                "security": [],
                                "responses": {"200": _json({"type": "object"}, "Healthy."),
                                              "503": _json(_ERROR, "Unhealthy.")}}},
            "/metrics": {"get": {"summary": "Prometheus queue gauges", "responses": {
                "200": {"description": "Prometheus text format."}, **_ERRORS}}},
        },
    }  # fmt: skip
