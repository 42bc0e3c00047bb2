"""Request input checked field by field: each refusal names its field (the API's 422s).

JSON gives types that Python's enqueue would take for other things (1.0 for an
int, true for 1, a string for a datetime): they are checked here, by their JSON
names. Ranges, name patterns and sizes are then pgq.enqueue's and pgq.admin's
own checks, whose InvalidJobError messages start with the field they refuse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pgq import admin
from pgq.enqueue import EnqueueOptions
from pgq.errors import shown

JOB_FIELDS = ("task", "args", "queue", "priority", "run_at", "delay", "max_attempts",
              "dedupe_key")  # fmt: skip
IDEMPOTENCY_HEADER = "Idempotency-Key"
LIST_PARAMETERS = ("status", "queue", "task", "q", "limit", "cursor")
MAX_PAGE = 500
DEAD_FILTER_FIELDS = ("task", "queue", "error_pattern", "died_after", "died_before")
QUEUED_FILTER_FIELDS = ("task", "queue")


class FieldError(Exception):
    """Bad input: ``field`` (None for the body as a whole) and why, for a 422."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


def field_of(message: str) -> str | None:
    """The field an InvalidJobError from pgq.enqueue or pgq.admin names, if any."""
    words = message.replace("'s ", " ").split()
    if words[:1] == ["invalid"] and len(words) > 1:
        words = words[1:]  # "invalid task name ..."
    if words[:2] == ["job", "args"]:
        return "args"
    if message.startswith("pass run_at or delay"):
        return "run_at"
    return words[0] if words and words[0] in (*JOB_FIELDS, *LIST_PARAMETERS) else None


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or FieldError(None, ...)."""
    try:
        # NaN and Infinity are not JSON, though Python's json reads them.
        data = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise FieldError(None, "the body nests too deeply") from None
    except ValueError as error:
        raise FieldError(None, f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise FieldError(None, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def new_job(
    data: Mapping[str, Any], idempotency_key: str | None
) -> tuple[str, dict[str, Any], EnqueueOptions]:
    """(task, args, options) from a POST /api/jobs body.

    The Idempotency-Key header is the job's dedupe key: a retried request finds
    the job its first attempt made while that job is queued or running.
    """
    _no_unknown(data, JOB_FIELDS, "field")
    task = data.get("task")
    if task is None:
        raise FieldError("task", "task is required: the name of the task to run")
    _typed("task", task, str, "a string")
    args = data.get("args", {})
    _typed("args", args, dict, "a JSON object of keyword arguments")
    options: EnqueueOptions = {}
    for name in ("queue", "dedupe_key"):
        if data.get(name) is not None:
            options[name] = _typed(name, data[name], str, "a string")
    for name in ("priority", "max_attempts"):
        if data.get(name) is not None:
            options[name] = _integer(name, data[name])  # type: ignore[literal-required]
    if data.get("run_at") is not None:
        options["run_at"] = moment("run_at", data["run_at"])
    if data.get("delay") is not None:
        delay = data["delay"]
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise FieldError("delay", f"delay must be a number of seconds, got {shown(delay)}")
        options["delay"] = delay
    if idempotency_key is not None:
        given = options.get("dedupe_key")
        if given is not None and given != idempotency_key:
            raise FieldError(
                IDEMPOTENCY_HEADER,
                f"the {IDEMPOTENCY_HEADER} header and dedupe_key differ: send one, or the same",
            )
        options["dedupe_key"] = idempotency_key
    return task, args, options


def moment(name: str, value: object) -> datetime:
    """An ISO 8601 time with its offset ("2030-01-01T09:00:00+00:00")."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                raise FieldError(name, f"{name} needs a UTC offset (+00:00 or Z), got {value!r}")
            return parsed
    raise FieldError(name, f"{name} must be an ISO 8601 time with an offset, got {shown(value)}")


def job_list(params: Mapping[str, str]) -> dict[str, Any]:
    """``admin.list_jobs``'s keyword arguments from GET /api/jobs's query string."""
    _no_unknown(params, LIST_PARAMETERS, "query parameter")
    limit_text = params.get("limit", "50")
    if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text) <= MAX_PAGE):
        raise FieldError("limit", f"limit must be a whole number from 1 to {MAX_PAGE}")
    return {
        "status": params.get("status") or None,
        "queue": params.get("queue") or None,
        "task": params.get("task") or None,
        "search": params.get("q") or None,
        "before_id": cursor_id(params.get("cursor")),
        "limit": int(limit_text),
    }


def cursor_id(cursor: str | None) -> int | None:
    """The id a page's ``next_cursor`` stands for. Opaque to clients: only echo it back."""
    if not cursor:
        return None
    if cursor.isascii() and cursor.isdigit() and 1 <= int(cursor) <= 2**63 - 1:
        return int(cursor)
    raise FieldError("cursor", "cursor must be a next_cursor this API returned")


def bulk_selection(data: Mapping[str, Any], action: str) -> tuple[list[int] | None, Any, bool]:
    """(ids, filter, dry_run) of a bulk action's body: ids or a filter, not both."""
    _no_unknown(data, ("ids", "filter", "dry_run"), "field")
    dry_run = data.get("dry_run", False)
    _typed("dry_run", dry_run, bool, "true or false")
    if ("ids" in data) == ("filter" in data):
        raise FieldError(None, 'send either "ids" (a list of job ids) or "filter", not both')
    if "ids" in data:
        ids = data["ids"]
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids
        ):
            raise FieldError("ids", f"ids must be a list of job ids (integers), got {shown(ids)}")
        return ids, None, dry_run
    where = data["filter"]
    _typed("filter", where, dict, "a JSON object")
    if action == "requeue":
        _no_unknown(where, DEAD_FILTER_FIELDS, "filter field")
        for name in ("died_after", "died_before"):
            if where.get(name) is not None:
                where = {**where, name: moment(name, where[name])}
        for name in ("task", "queue", "error_pattern"):
            if where.get(name) is not None:
                _typed(name, where[name], str, "a string")
        return None, admin.DeadJobFilter(**where), dry_run
    if action in ("cancel", "retry_now"):
        _no_unknown(where, QUEUED_FILTER_FIELDS, "filter field")
        for name in QUEUED_FILTER_FIELDS:
            if where.get(name) is not None:
                _typed(name, where[name], str, "a string")
        return None, admin.QueuedJobFilter(**where), dry_run
    raise FieldError("filter", f"{action} takes ids only (age-based deletion is `pgq prune`)")


def _no_unknown(data: Mapping[str, Any], known: tuple[str, ...], kind: str) -> None:
    for name in data:
        if name not in known:
            raise FieldError(name, f"unknown {kind} {name!r}: use {', '.join(known)}")


def _typed(name: str, value: Any, kind: type, described: str) -> Any:
    if not isinstance(value, kind):
        raise FieldError(name, f"{name} must be {described}, got {shown(value)}")
    return value


def _integer(name: str, value: object) -> int:
    # JSON true is not 1, and 2.0 is not a count of attempts.
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(name, f"{name} must be an integer, got {shown(value)}")
    return value
