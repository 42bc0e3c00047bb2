"""Log set-up for `pgq` commands: readable lines, or one JSON object per line.

Job events carry fields (job_id, task, queue, attempt, outcome, duration_ms,
error) in the record's extras (pgq.worker.stats writes them); the JSON format
puts them at the top level so a log pipeline can filter on them without parsing
the message. Every other line logged while a handler runs, from any logger,
gets the job's job_id, task and attempt from ``JobContextFilter``, which reads
``CURRENT_JOB``, which pgq.middleware sets for the handler's thread or task.
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pgq.job import ClaimedJob

#: The job whose handler this thread or asyncio task runs now, else None. Set around
#: every handler call by pgq.middleware; read by JobContextFilter.
CURRENT_JOB: ContextVar[ClaimedJob | None] = ContextVar("pgq_current_job", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
JOB_FIELDS = ("job_id", "task", "queue", "attempt", "outcome", "duration_ms", "error", "summary")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """A count and its noun, as log lines and command output print them: ``plural(1, "job")``
    is ``1 job``, ``plural(2, "dead job")`` is ``2 dead jobs``; ``nouns`` where "s" is wrong."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {nouns or noun + 's'}"


class JobContextFilter(logging.Filter):
    """Adds the running job's ``job_id``, ``task`` and ``attempt`` to each record logged
    while a handler runs (in its thread or asyncio task); other records pass unchanged.

    Put it on a handler, as pgq's own log set-up does, so that it sees records from
    every logger. With your own logging configuration::

        handler.addFilter(pgq.logs.JobContextFilter())

    or, in a ``logging.config.dictConfig``::

        "filters": {"pgq_job": {"()": "pgq.logs.JobContextFilter"}},
        "handlers": {"console": {..., "filters": ["pgq_job"]}},

    A format string can then use ``%(job_id)s``; the fields are set on every record
    (None outside a job), so such a format never fails.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is not None:
            return True  # pgq's own job events carry their fields already
        job = CURRENT_JOB.get()
        if job is None:  # keep fields a caller passed in ``extra``
            for name in ("job_id", "task", "attempt"):
                record.__dict__.setdefault(name, None)
        else:
            record.job_id, record.task, record.attempt = job.id, job.task, job.attempt
            record.job_context = f" [job {job.id} {job.task} attempt {job.attempt}]"
        return True


# C0 and C1 control characters but tab and newline: ESC, BEL, CR and the like.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters written as escapes (``\\x1b``).

    Error messages and args come from outside (a fetched page, a user's input):
    shown raw, an ESC sequence would drive the operator's terminal, and a newline
    would forge a log line. ``newlines=True`` keeps line breaks (a traceback's).
    """
    if not newlines:
        text = text.replace("\n", "\\n")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, with the job's id, task and attempt after a line a handler logged.

    One event is one line: control characters and line breaks in a message are
    written as escapes (a traceback keeps its own lines).
    """

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = printable(record.getMessage()), None
        text = printable(super().format(safe), newlines=True)
        suffix = getattr(record, "job_context", None)
        return text if suffix is None else text + suffix


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, and job fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Log to stderr at ``level`` in ``text`` or ``json`` format."""
    handler = logging.StreamHandler()
    handler.addFilter(JobContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic logs its plugin set-up at INFO on every run: not news in a worker's log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
