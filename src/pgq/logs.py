"""Log set-up for `pgq` commands: readable lines, or one JSON object per line.

Job events carry fields (job_id, task, queue, attempt, outcome, duration_ms,
error) in the record's extras; the JSON format puts them at the top level so a
log pipeline can filter on them without parsing the message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from pgq.outcome import Outcome

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
JOB_FIELDS = ("job_id", "task", "queue", "attempt", "outcome", "duration_ms", "error")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic logs its plugin set-up at INFO on every run: not news in a worker's log.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def log_job_event(log: logging.Logger, result: Outcome, duration_seconds: float | None) -> None:
    """One line per job event: the message for people, the fields for log pipelines."""
    job, kind = result.job, result.kind
    if kind == "succeeded" and not log.isEnabledFor(logging.INFO):
        return  # the hot path: skip building a record nobody will see
    duration_ms = None if duration_seconds is None else round(duration_seconds * 1000, 3)
    fields: dict[str, Any] = {
        "job_id": job.id, "task": job.task, "queue": job.queue, "attempt": job.attempt,
        "outcome": kind, "duration_ms": duration_ms,
    }  # fmt: skip
    if kind == "succeeded":
        took = "" if duration_ms is None else f" in {duration_ms:.1f}ms"
        log.info("job %s (%s) succeeded on attempt %s%s", job.id, job.task, job.attempt, took,
                 extra=fields)  # fmt: skip
    elif kind == "retried":
        fields["error"] = result.error
        log.warning(
            "job %s (%s) failed on attempt %s/%s, retrying in %.1fs: %s",
            job.id, job.task, job.attempt, job.max_attempts, result.delay_seconds, result.error,
            extra=fields,
        )  # fmt: skip
    elif kind in ("dead", "gave_up"):
        fields["error"] = result.error
        log.error(
            "job %s (%s) is dead after attempt %s/%s: %s",
            job.id, job.task, job.attempt, job.max_attempts, result.error, extra=fields,
        )  # fmt: skip
    else:
        log.info("job %s (%s) %s", job.id, job.task, kind.replace("_", " "), extra=fields)
