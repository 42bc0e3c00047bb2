"""The job as pgq sees it: its status (the state machine) and the row a worker claims."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class JobStatus(enum.StrEnum):
    """Where a job is in its life. ``docs/concepts/lifecycle.md`` draws the edges.

    Each value's comment names who moves a job out of it.
    """

    #: Waiting for ``run_at``. Left by a worker's claim (``claim_jobs``) or an
    #: operator's cancel.
    QUEUED = "queued"
    #: Leased to one worker until ``locked_until``. Left by that worker's finish
    #: (``finish_jobs``), its hand back at shutdown, or rescue when the lease expires.
    RUNNING = "running"
    #: Finished. Terminal.
    SUCCEEDED = "succeeded"
    #: Attempts exhausted or given up: the dead-letter queue. Left only when an
    #: operator requeues it.
    DEAD = "dead"
    #: Cancelled by an operator before it ran. Terminal.
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job leased to this worker: what a claim returns and a handler runs."""

    id: int
    queue: str
    task: str
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    lease_token: uuid.UUID
    created_at: datetime
