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
    JobStateError,
    PgqError,
    SchemaError,
    Snooze,
)
from pgq.job import ClaimedJob, JobStatus
from pgq.retry import Retry
from pgq.tasks import App, JobContext, Task
from pgq.worker import Worker

__all__ = [
    "App",
    "ClaimedJob",
    "ConfigError",
    "EnqueueResult",
    "GiveUp",
    "InvalidJobError",
    "JobContext",
    "JobNotFoundError",
    "JobSignal",
    "JobSpec",
    "JobStateError",
    "JobStatus",
    "PgqError",
    "Retry",
    "SchemaError",
    "Snooze",
    "Task",
    "Worker",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
]
