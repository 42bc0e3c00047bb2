"""pgq: a PostgreSQL-native background job queue."""

from pgq.enqueue import (
    EnqueueResult,
    JobSpec,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
)
from pgq.errors import (
    ConfigError,
    GiveUp,
    InvalidJobError,
    JobNotFoundError,
    JobSignal,
    PgqError,
    SchemaError,
    Snooze,
    UnknownTaskError,
)
from pgq.job import ClaimedJob, JobStatus
from pgq.retry import Retry

__all__ = [
    "ClaimedJob",
    "ConfigError",
    "EnqueueResult",
    "GiveUp",
    "InvalidJobError",
    "JobNotFoundError",
    "JobSignal",
    "JobSpec",
    "JobStatus",
    "PgqError",
    "Retry",
    "SchemaError",
    "Snooze",
    "UnknownTaskError",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
]
