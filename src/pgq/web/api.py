"""The JSON API under /api/: enqueue, read, requeue, cancel and retry jobs; stats, the live
workers, the periodic schedules, health, metrics.

Each endpoint checks its input (api_input), then runs one pgq.admin or
pgq.enqueue call on a pooled connection in a worker thread. Status codes: 201 a
job created, 200 otherwise, 404 no such job, 409 the job's state refuses the
action, 422 bad input (``{"error": ..., "field": ...}``), 401/403 (security).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pgq import admin
from pgq.enqueue import EnqueueOptions, enqueue
from pgq.metrics import QUEUE_GAUGES
from pgq.migrate import check_schema
from pgq.web import api_input
from pgq.web.api_input import FieldError
from pgq.web.context import Json, database, read_body
from pgq.web.openapi import openapi_document

# URL spellings of the admin actions.
ACTIONS = {"requeue": "requeue", "cancel": "cancel", "retry-now": "retry_now", "delete": "delete"}
SINGLE_ACTIONS = {"requeue": admin.requeue, "cancel": admin.cancel, "retry-now": admin.retry_now}


async def create_job(request: Request) -> Response:
    data = api_input.json_object(await read_body(request))
    key = request.headers.get(api_input.IDEMPOTENCY_HEADER)
    task, args, options = api_input.new_job(data, key)
    created, job = await database(request).run(_enqueue, task, args, options)
    where = {"Location": request.url_for("api_get_job", job_id=job.id).path}
    return Json(job.as_dict(), status_code=201 if created else 200, headers=where)


def _enqueue(
    conn: psycopg.Connection[Any],
    task: str,
    args: dict[str, Any],
    options: EnqueueOptions,
    *,
    schema: str,
) -> tuple[bool, admin.JobDetail]:
    # One transaction: a job is returned as it was committed, or nothing is written.
    with conn.transaction():
        result = enqueue(conn, task, args, schema=schema, **options)
        return result.created, admin.get_job(conn, result.id, schema=schema)


async def get_job(request: Request) -> Response:
    job = await database(request).run(admin.get_job, request.path_params["job_id"])
    return Json(job.as_dict())


async def list_jobs(request: Request) -> Response:
    chosen = api_input.job_list(request.query_params)
    jobs = await database(request).run(admin.list_jobs, **chosen)
    more = len(jobs) == chosen["limit"]
    return Json({
        "jobs": [job.as_dict() for job in jobs],
        "next_cursor": str(jobs[-1].id) if more else None,
    })  # fmt: skip


async def act_on_job(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    run = SINGLE_ACTIONS.get(request.path_params["action"])
    if run is None:
        return _no_action(request, SINGLE_ACTIONS)
    db = database(request)
    await db.run(run, job_id)
    return Json((await db.run(admin.get_job, job_id)).as_dict())


async def act_in_bulk(request: Request) -> Response:
    action = ACTIONS.get(request.path_params["action"])
    if action is None:
        return _no_action(request, ACTIONS)
    data = api_input.json_object(await read_body(request) or b"{}")
    ids, where, dry_run = api_input.bulk_selection(data, action)
    db = database(request)
    if ids is not None:
        if dry_run:
            return Json({"action": action, "dry_run": True,
                         "count": await db.run(admin.count_for_bulk, action, ids)})  # fmt: skip
        done = await db.run(admin.act_on_jobs, action, ids)
    elif isinstance(where, admin.DeadJobFilter):
        if dry_run:
            return Json({"action": action, "dry_run": True,
                         "count": await db.run(admin.count_dead_jobs, where)})  # fmt: skip
        done = await db.run(admin.requeue_dead, where)
    else:
        if dry_run:
            matching = await db.run(_all_queued, where)
            return Json({"action": action, "dry_run": True, "count": len(matching)})
        done = await db.run(admin.act_on_queued, action, where)
    return Json({"action": action, "count": len(done), "ids": done})


def _no_action(request: Request, known: dict[str, Any]) -> Response:
    named = request.path_params["action"]
    return Json({"error": f"no action {named!r}: use {', '.join(known)}"}, status_code=404)


def _all_queued(
    conn: psycopg.Connection[Any], where: admin.QueuedJobFilter, *, schema: str
) -> list[int]:
    found: list[int] = []
    while page := admin.find_queued_jobs(
        conn, where, limit=admin.REQUEUE_BATCH, after_id=found[-1] if found else 0, schema=schema
    ):
        found += page
    return found


async def stats(request: Request) -> Response:
    queues, workers, unserved = await database(request).run(_stats)
    return Json({
        "queues": [queue.as_dict() for queue in queues],
        "workers_alive": len(workers),
        "unserved": unserved,
    })  # fmt: skip


def _stats(
    conn: psycopg.Connection[Any], *, schema: str
) -> tuple[list[admin.QueueOverview], list[admin.LiveWorker], list[admin.UnservedJobs]]:
    return (
        admin.queue_overview(conn, schema=schema),
        admin.live_workers(conn, schema=schema),
        admin.unserved_jobs(conn, schema=schema),
    )


async def workers(request: Request) -> Response:
    return Json({"workers": await database(request).run(admin.live_workers)})


async def schedules(request: Request) -> Response:
    return Json({"schedules": await database(request).run(admin.schedules)})


async def health(request: Request) -> Response:
    """200 when the database answers and pgq's schema is one this pgq runs on; else 503."""
    try:
        await database(request).run(_check)
    except Exception as error:  # any failure is "unhealthy", said without the DSN
        return Json({"status": "unavailable", "error": database(request).safe(error)}, 503)
    return Json({"status": "ok"})


def _check(conn: psycopg.Connection[Any], *, schema: str) -> None:
    check_schema(conn, schema=schema)


async def metrics(request: Request) -> Response:
    queues = await database(request).run(admin.queue_overview)
    registry = CollectorRegistry()
    registry.register(_QueueCollector(queues))
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


class _QueueCollector(Collector):
    """The worker's queue gauges (pgq.metrics), read live, and the dead jobs per queue."""

    def __init__(self, queues: list[admin.QueueOverview]) -> None:
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        columns = {"due": "due", "scheduled": "scheduled", "running": "running",
                   "lag": "lag_seconds"}  # fmt: skip
        for key, name, documentation in QUEUE_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["queue"])
            for queue in self.queues:
                family.add_metric([queue.queue], float(getattr(queue, columns[key])))
            yield family
        dead = GaugeMetricFamily("pgq_queue_dead_jobs", "Dead jobs.", labels=["queue"])
        for queue in self.queues:
            dead.add_metric([queue.queue], float(queue.dead))
        yield dead


async def openapi(request: Request) -> Response:
    return Json(openapi_document(str(request.base_url).rstrip("/")))


def field_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, FieldError)
    return Json(error.as_dict(), status_code=422)


ROUTES = [
    Route("/api/jobs", create_job, methods=["POST"], name="api_create_job"),
    Route("/api/jobs", list_jobs, methods=["GET"], name="api_list_jobs"),
    Route("/api/jobs/{job_id:int}", get_job, methods=["GET"], name="api_get_job"),
    Route("/api/jobs/{job_id:int}/{action:str}", act_on_job, methods=["POST"],
          name="api_act_on_job"),
    Route("/api/jobs/{action:str}", act_in_bulk, methods=["POST"], name="api_act_in_bulk"),
    Route("/api/stats", stats, methods=["GET"], name="api_stats"),
    Route("/api/workers", workers, methods=["GET"], name="api_workers"),
    Route("/api/schedules", schedules, methods=["GET"], name="api_schedules"),
    Route("/api/openapi.json", openapi, methods=["GET"], name="api_openapi"),
    Route("/health", health, methods=["GET"], name="health"),
    Route("/metrics", metrics, methods=["GET"], name="metrics"),
]  # fmt: skip
