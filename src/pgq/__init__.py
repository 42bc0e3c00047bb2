"""pgq: a PostgreSQL-native background job queue."""

from pgq.admin import JobDetail, cancel, get_job, get_job_async, wait, wait_async
from pgq.config import installed_version
from pgq.enqueue import (
    EnqueueOptions,
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
    MiddlewareError,
    PgqError,
    SchemaError,
    Snooze,
    WaitTimeout,
)
from pgq.job import JobStatus
from pgq.retention import Retention
from pgq.retry import Retry
from pgq.tasks import App, JobContext, Task
from pgq.worker import Worker

# The installed distribution's, as pyproject.toml states it: `pgq --version` prints it.
__version__ = installed_version()

__all__ = [
    "App",
    "ConfigError",
    "EnqueueOptions",
    "EnqueueResult",
    "GiveUp",
    "InvalidJobError",
    "JobContext",
    "JobDetail",
    "JobNotFoundError",
    "JobSignal",
    "JobSpec",
    "JobStateError",
    "JobStatus",
    "MiddlewareError",
    "PgqError",
    "Retention",
    "Retry",
    "SchemaError",
    "Snooze",
    "Task",
    "WaitTimeout",
    "Worker",
    "cancel",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
    "get_job",
    "get_job_async",
    "wait",
    "wait_async",
]
