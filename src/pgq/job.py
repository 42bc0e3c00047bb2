"""The job as every layer sees it: its status (the state machine), its limits, the claimed row.

This module imports nothing from pgq, so that any other module (errors included)
may use the names and limits it holds without creating an import cycle.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DAY_SECONDS = 86_400.0
#: The longest delay pgq schedules (ten years): PostgreSQL's timestamps end
#: somewhere, and a longer wait is a bug rather than a plan.
MAX_DELAY_SECONDS = 10 * 365 * DAY_SECONDS

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5
MAX_ATTEMPTS_LIMIT = 1_000_000
MAX_PRIORITY = 2**31 - 1
MAX_JOB_ID = 2**63 - 1  # ids are bigint
MAX_DEDUPE_KEY_LENGTH = 500
# Args are for identifiers and small values; a bigger payload belongs in your
# own table or object store, with its key in the args. Checked in SQL too.
MAX_ARGS_BYTES = 1_048_576
# How deep args may nest, the args object being level 1: a worker decodes them on
# its own stack, which must never run out (Python's recursion limit is 1,000).
# Checked in SQL too (migrations/0004).
MAX_ARGS_DEPTH = 100
# A handler's return value, stored as the job's result: the same limit as args, and
# the same depth (MAX_ARGS_DEPTH), so that every reader can decode it.
MAX_RESULT_BYTES = MAX_ARGS_BYTES
# What ctx.progress() takes: a worker writes it again at every report, so it is
# kept small; a large document belongs in the result.
MAX_PROGRESS_BYTES = 65_536
# When a job may first run: a timezone-aware time in [RUN_AT_MIN, RUN_AT_MAX). Every
# tool (Python's datetime, the operator views' date arithmetic) can handle these.
RUN_AT_MIN = datetime(1970, 1, 1, tzinfo=UTC)
RUN_AT_MAX = datetime(9999, 1, 1, tzinfo=UTC)

# The same patterns as the jobs table's CHECK constraints (migrations/0001).
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")
TASK_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}\Z")


class JobStatus(enum.StrEnum):
    """Where a job is in its life. ``docs/concepts/lifecycle.md`` draws the edges.

    Each value's comment names who moves a job out of it.
    """

    #: Waiting for ``run_at``. Left by a worker's claim (``claim_jobs``) or an
    #: operator's cancel.
    QUEUED = "queued"
    #: Leased to one worker until ``locked_until``. Left by that worker's finish
    #: (``finish_succeeded_jobs``, ``finish_jobs``), its hand back at shutdown,
    #: rescue when the lease expires (``rescue_jobs``), or an operator's cancel.
    RUNNING = "running"
    #: Finished. Terminal.
    SUCCEEDED = "succeeded"
    #: Attempts exhausted or given up: the dead-letter queue. Left only when an
    #: operator requeues it.
    DEAD = "dead"
    #: Cancelled by an operator, before it ran or while it ran. Terminal.
    CANCELLED = "cancelled"


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job leased to a worker: what a claim returns and a handler runs."""

    id: int
    queue: str
    task: str
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    lease_token: uuid.UUID
    created_at: datetime
    #: The enqueuer's trace context as JSON text (pgq.contrib.otel), None if it did not trace.
    trace_context: str | None = None
