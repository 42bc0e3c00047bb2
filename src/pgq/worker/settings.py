"""A worker's settings, validated once, frozen, and passed whole to each part and child.

``Worker(...)`` and ``pgq work`` build one ``WorkerSettings``; every part reads
what it needs from it, and ``pgq work --processes N`` hands it to each child
process as JSON (``to_json``), so no option is spelt out a second time on a
command line.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pgq.config import resolve_schema, worker_conninfo
from pgq.errors import ConfigError, shown
from pgq.job import DAY_SECONDS, QUEUE_NAME
from pgq.retention import Retention

MAX_CONCURRENCY = 10_000
PRUNE_INTERVAL_SECONDS = 60.0
_WORKER_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}\Z")


def worker_name() -> str:
    """``host:pid:random``: who holds a lease, as shown in ``locked_by``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """Everything a worker is told; ``pgq.Worker``'s docstring says what each one means.

    ``dsn`` carries the worker's connection defaults (connect timeout,
    keepalives); ``rescue_interval_seconds`` is resolved (half the lease by
    default); ``name`` is unique per process unless given.
    """

    dsn: str
    schema: str
    queues: Mapping[str, int | None] | None
    concurrency: int
    poll_seconds: float
    lease_seconds: float
    poll_only: bool
    shutdown_grace_seconds: float
    rescue_interval_seconds: float
    retention: Retention
    prune_interval_seconds: float
    metrics_port: int | None
    metrics_host: str
    synchronous_commit: bool
    queue_weights: Mapping[str, int] | None = None
    strict_queue_order: bool = False
    name: str = field(default_factory=worker_name)

    @classmethod
    def create(
        cls,
        dsn: str,
        *,
        schema: str | None,
        queues: Mapping[str, int | None] | None,
        concurrency: int,
        poll_seconds: float,
        lease_seconds: float,
        poll_only: bool,
        shutdown_grace_seconds: float,
        rescue_interval_seconds: float | None,
        retention: Retention | None,
        prune_interval_seconds: float,
        metrics_port: int | None,
        metrics_host: str,
        name: str | None,
        synchronous_commit: bool,
        queue_weights: Mapping[str, int] | None = None,
        strict_queue_order: bool = False,
    ) -> WorkerSettings:
        """Check every option (ConfigError naming the bad one) and resolve the defaults."""
        _check_range("concurrency", concurrency, 1, MAX_CONCURRENCY, whole=True)
        _check_range("poll interval", poll_seconds, 0, DAY_SECONDS, above_low=True, unit=" seconds")
        _check_range("lease", lease_seconds, 0.5, DAY_SECONDS, unit=" seconds")
        _check_range("shutdown grace", shutdown_grace_seconds, 0, DAY_SECONDS, unit=" seconds")
        if rescue_interval_seconds is not None:
            _check_range(
                "rescue interval", rescue_interval_seconds, 0, DAY_SECONDS, above_low=True,
                unit=" seconds",
            )  # fmt: skip
        _check_range(
            "prune interval", prune_interval_seconds, 0, DAY_SECONDS, above_low=True,
            unit=" seconds",
        )  # fmt: skip
        if metrics_port is not None:
            _check_range("metrics port", metrics_port, 0, 65535, whole=True)
        _check_queues(queues)
        if queue_weights is not None:
            queue_weights = _check_queue_weights(queue_weights, queues, strict_queue_order)
            queues = queues or dict.fromkeys(queue_weights)
        if strict_queue_order is True and not queues:
            raise ConfigError("strict queue order needs the queues in their order: name them")
        if name is not None and not (isinstance(name, str) and _WORKER_NAME.match(name)):
            raise ConfigError(
                f"invalid worker name {shown(name)}: 1 to 200 characters, no control characters"
            )
        if not isinstance(metrics_host, str) or not metrics_host or "\x00" in metrics_host:
            raise ConfigError(
                f"metrics host must be a host name or address, got {shown(metrics_host)}"
            )
        if retention is not None and not isinstance(retention, Retention):
            raise ConfigError(f"retention must be a pgq.Retention, got {shown(retention)}")
        for flag, value in (
            ("poll_only", poll_only), ("synchronous_commit", synchronous_commit),
            ("strict_queue_order", strict_queue_order),
        ):  # fmt: skip
            if not isinstance(value, bool):
                raise ConfigError(f"{flag} must be True or False, got {shown(value)}")
        named = {"name": name} if name is not None else {}
        return cls(
            dsn=worker_conninfo(dsn),
            schema=resolve_schema(schema),
            queues=dict(queues) if queues else None,
            concurrency=concurrency,
            poll_seconds=poll_seconds,
            lease_seconds=lease_seconds,
            poll_only=poll_only,
            shutdown_grace_seconds=shutdown_grace_seconds,
            rescue_interval_seconds=rescue_interval_seconds or max(1.0, lease_seconds / 2),
            retention=retention or Retention(),
            prune_interval_seconds=prune_interval_seconds,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            synchronous_commit=synchronous_commit,
            queue_weights=queue_weights,
            strict_queue_order=strict_queue_order,
            **named,
        )

    def to_json(self) -> str:
        """These settings as JSON (the DSN included: pass it as a secret, not on a command line)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        """Settings written by ``to_json``, each child process getting a name of its own."""
        values: dict[str, Any] = json.loads(text)
        values["retention"] = Retention(**values["retention"])
        values.pop("name")
        return cls(**values)

    def summary(self) -> str:
        """How this worker runs, for its start-up log line."""
        # As --queues takes them: emails=5 caps a queue, a bare name has no cap of its own.
        queues = (
            ", ".join(name if cap is None else f"{name}={cap}" for name, cap in self.queues.items())
            if self.queues
            else "all"
        )
        if self.queue_weights:
            weights = ", ".join(f"{name}={weight}" for name, weight in self.queue_weights.items())
            queues += f" (weighted {weights})"
        elif self.strict_queue_order and self.queues:
            queues += " (in strict order)"
        wakeups = f"polling every {self.poll_seconds:g}s" if self.poll_only else "listening"
        return (
            f"queues {queues}, concurrency {self.concurrency}, "
            f"lease {self.lease_seconds:g}s, {wakeups}"
        )

    def for_child(self, slot: int) -> WorkerSettings:
        """The settings of child ``slot`` of ``--processes``: its own metrics port."""
        if self.metrics_port is None:
            return self
        return replace(self, metrics_port=self.metrics_port + slot)


def _check_queues(queues: object) -> None:
    """None (every queue), or queue names mapped to their limits (None: no limit of its own)."""
    if queues is None:
        return
    if not isinstance(queues, Mapping):
        raise ConfigError(f"queues must map queue names to limits, got {shown(queues)}")
    if not queues:
        raise ConfigError("queues is empty: pass None to serve every queue")
    for queue, limit in queues.items():
        if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
            raise ConfigError(f"invalid queue name {shown(queue)}")
        if limit is not None:
            _check_range(f"queue {queue!r}: concurrency", limit, 1, MAX_CONCURRENCY, whole=True)


def _check_queue_weights(
    weights: object, queues: Mapping[str, int | None] | None, strict: bool
) -> dict[str, int]:
    """Queue names mapped to whole weights >= 1; each served queue gets one (1 if unsaid)."""
    if strict:
        raise ConfigError("queue weights and strict queue order exclude each other: choose one")
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError(f"queue weights must map queue names to weights, got {shown(weights)}")
    for queue, weight in weights.items():
        if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
            raise ConfigError(f"invalid queue name {shown(queue)} in the queue weights")
        _check_range(f"queue {queue!r}: weight", weight, 1, 1_000, whole=True)
        if queues is not None and queue not in queues:
            raise ConfigError(
                f"queue {queue!r} has a weight but is not served: add it to the queues "
                f"({', '.join(queues)})"
            )
    return {queue: int(weights.get(queue, 1)) for queue in queues or weights}


def _check_range(
    what: str,
    value: float,
    low: float,
    high: float,
    *,
    above_low: bool = False,
    unit: str = "",
    whole: bool = False,
) -> None:
    """ConfigError unless ``low <= value <= high`` (``low < value`` with ``above_low``).

    ``whole``: an int is wanted (a count or a port), not just any number.
    """
    if whole and isinstance(value, float):
        raise ConfigError(f"{what} must be a whole number, got {shown(value)}")
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or not (low < value if above_low else low <= value) or not value <= high:
        bound = f"> {low:g}" if above_low else f">= {low:g}"
        raise ConfigError(f"{what} must be {bound}{unit} and <= {high:g}{unit}, got {shown(value)}")
