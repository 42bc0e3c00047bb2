"""Log set-up for `pgq` commands: readable lines, or one JSON object per line.

Job events carry fields (job_id, task, queue, attempt, outcome, duration_ms,
error) in the record's extras (pgq.worker.stats writes them); the JSON format
puts them at the top level so a log pipeline can filter on them without parsing
the message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

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
