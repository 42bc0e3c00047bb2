"""A worker serving several queues: weighted shares, no starvation, strict order, bad settings."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import psycopg
import pytest

import pgq
from worker_helpers import enqueue_jobs, make_worker, running


def slow_app(seconds: float) -> tuple[pgq.App, list[str]]:
    """An app whose one task sleeps ``seconds``; the list notes each start's queue."""
    app = pgq.App()
    started: list[str] = []
    lock = threading.Lock()

    @app.task()
    def work(n: int, ctx: pgq.JobContext) -> None:
        with lock:
            started.append(ctx.queue)
        time.sleep(seconds)

    return app, started


def fill(dsn: str, jobs_per_queue: dict[str, int]) -> None:
    enqueue_jobs(dsn, [
        pgq.JobSpec("work", {"n": n}, queue=queue)
        for queue, count in jobs_per_queue.items()
        for n in range(count)
    ])  # fmt: skip


def run_for(worker: pgq.Worker, seconds: float) -> None:
    async def scenario() -> None:
        async with running(worker):
            await asyncio.sleep(seconds)

    asyncio.run(scenario())


def test_weighted_queues_share_the_capacity_by_weight_while_all_have_jobs(dsn: str) -> None:
    app, started = slow_app(0.03)
    fill(dsn, {"critical": 600, "default": 600, "low": 600})
    weights = {"critical": 6, "default": 3, "low": 1}
    worker = make_worker(app, dsn, concurrency=10, queue_weights=weights)

    run_for(worker, 3.0)

    counts = Counter(started[50:])  # past the first claims, while every queue has jobs
    total = sum(counts.values())
    assert total > 300, f"only {total} jobs started"
    for queue, weight in weights.items():
        share = counts[queue] / total
        assert abs(share - weight / 10) < 0.08, f"{queue}: {share:.0%} of starts ({counts})"


def test_a_light_queue_is_never_starved_by_a_heavy_one(dsn: str) -> None:
    app, started = slow_app(0.02)
    fill(dsn, {"bulk": 2_000, "rare": 20})
    worker = make_worker(app, dsn, concurrency=4, queue_weights={"bulk": 100, "rare": 1})

    run_for(worker, 2.0)

    assert started.count("rare") >= 10, Counter(started)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pgq.jobs WHERE queue = 'bulk' AND status = 'queued'"
        )
        bulk_left = row.fetchone()
    assert bulk_left is not None and bulk_left[0] > 0, "the heavy queue still had a backlog"


def test_weights_give_a_queue_without_jobs_share_to_the_others(dsn: str) -> None:
    app, started = slow_app(0.02)
    fill(dsn, {"low": 400})  # the heavy queue is empty
    worker = make_worker(app, dsn, concurrency=4, queue_weights={"high": 9, "low": 1})

    run_for(worker, 1.5)

    # With only its 10 % share, low would start about 1.5 s / 20 ms x 0.4 = 30 jobs.
    assert started.count("low") > 150, Counter(started)


def test_strict_order_takes_a_queue_only_once_those_before_it_ran_dry(dsn: str) -> None:
    app, started = slow_app(0.01)
    fill(dsn, {"low": 60, "high": 60})
    worker = make_worker(
        app, dsn, concurrency=4, queues={"high": None, "low": None}, strict_queue_order=True
    )

    run_for(worker, 2.5)

    assert Counter(started) == {"high": 60, "low": 60}
    last_high = max(i for i, queue in enumerate(started) if queue == "high")
    first_low = min(i for i, queue in enumerate(started) if queue == "low")
    assert last_high < first_low, started


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_weights": {"a": 2}, "strict_queue_order": True}, "exclude each other"),
        ({"queue_weights": {"a": 0}}, "queue 'a': weight must be >= 1"),
        ({"queue_weights": {"a": 1.5}}, "queue 'a': weight must be a whole number"),
        (
            {"queue_weights": {"a": 2}, "queues": {"b": None}},
            "queue 'a' has a weight but is not served",
        ),
        ({"queue_weights": {"bad name!": 2}}, "invalid queue name 'bad name!'"),
        ({"queue_weights": {}}, "queue weights must map queue names to weights"),
    ],
)
def test_bad_queue_weights_are_refused_with_the_problem_named(
    dsn: str, options: dict[str, object], message: str
) -> None:
    app, _ = slow_app(0)
    with pytest.raises(pgq.ConfigError, match=message):
        make_worker(app, dsn, **options)


def test_a_worker_starts_the_jobs_it_claimed_together_highest_priority_first(dsn: str) -> None:
    app = pgq.App()
    started: list[int] = []

    @app.task()
    def note(priority: int) -> None:
        started.append(priority)

    worker = make_worker(app, dsn, concurrency=1)

    async def scenario() -> None:
        async with running(worker):
            # Quick jobs first, so that the next claim carries many jobs (the prefetch).
            enqueue_jobs(dsn, [pgq.JobSpec("note", {"priority": -1})] * 30)
            while len(started) < 30:
                await asyncio.sleep(0.01)
            low = [pgq.JobSpec("note", {"priority": 0}, priority=0)] * 20
            high = [pgq.JobSpec("note", {"priority": 5}, priority=5)] * 3
            enqueue_jobs(dsn, low + high)  # one transaction; the high ones have the larger ids
            while len(started) < 53:
                await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert started[30:] == [5] * 3 + [0] * 20


@pytest.mark.parametrize(
    ("capacity", "weights", "expected"),
    [
        (10, {"critical": 6, "default": 3, "low": 1}, {"critical": 6, "default": 3, "low": 1}),
        # 15.6, 7.8 and 2.6: the two largest remainders get the two jobs left over.
        (26, {"critical": 6, "default": 3, "low": 1}, {"critical": 15, "default": 8, "low": 3}),
        # 0.04 of a job still gets one: a light queue never starves.
        (4, {"bulk": 100, "rare": 1}, {"bulk": 3, "rare": 1}),
    ],
)
def test_capacity_is_shared_by_weight_in_whole_jobs_that_add_up(
    capacity: int, weights: dict[str, int], expected: dict[str, int]
) -> None:
    from pgq.worker.producer import weighted_shares

    assert weighted_shares(capacity, weights) == expected
