"""The prefetch: a worker holds more jobs than it runs while handlers are quick, none extra while
they are slow, and gives back what it holds when handlers turn slow or it stops."""

from __future__ import annotations

import asyncio
import threading
import time

import pgq
from worker_helpers import (
    AsyncConn,
    connect,
    enqueue_jobs,
    eventually,
    make_worker,
    running,
    value,
)


async def held_by(db: AsyncConn, worker: str) -> int:
    """Jobs claimed by ``worker`` and not finished: running and prefetched alike."""
    held = "SELECT count(*) FROM pgq.jobs WHERE status = 'running' AND locked_by = %s"
    return int(await value(db, held, [worker]))


async def count(db: AsyncConn, where: str) -> int:
    return int(await value(db, f"SELECT count(*) FROM pgq.jobs WHERE {where}"))  # noqa: S608


def test_quick_handlers_let_one_claim_carry_more_jobs_than_the_concurrency(dsn: str) -> None:
    app = pgq.App()

    @app.task()
    def tick(n: int) -> None:
        time.sleep(0.001)

    async def scenario() -> int:
        worker = make_worker(app, dsn, concurrency=2, name="quick")
        peak = 0
        async with await connect(dsn) as db, running(worker) as task:
            # A first few jobs teach the worker how long its handlers take.
            enqueue_jobs(dsn, [pgq.JobSpec("tick", {"n": n}) for n in range(20)])
            await eventually(
                lambda: worker.stats.counts["succeeded"] == 20, "warm", worker_task=task
            )
            enqueue_jobs(dsn, [pgq.JobSpec("tick", {"n": n}) for n in range(2_000)])
            while worker.stats.counts["succeeded"] < 2_020:
                peak = max(peak, await held_by(db, "quick"))
                await asyncio.sleep(0.01)
        return peak

    peak = asyncio.run(scenario())
    assert peak > 20, f"held at most {peak} jobs for a concurrency of 2"


def test_slow_handlers_hold_no_job_beyond_those_they_run(dsn: str) -> None:
    app = pgq.App()

    ran_on: list[str] = []

    @app.task()
    def slow(n: int, ctx: pgq.JobContext) -> None:
        ran_on.append(ctx.worker)
        time.sleep(0.2)

    async def scenario() -> tuple[int, int]:
        first = make_worker(app, dsn, concurrency=2, name="first")
        second = make_worker(app, dsn, concurrency=2, name="second")
        peak = 0
        async with await connect(dsn) as db, running(first), running(second):
            enqueue_jobs(dsn, [pgq.JobSpec("slow", {"n": n}) for n in range(16)])
            while await count(db, "status = 'succeeded'") < 16:
                # In hand: claimed and undecided (a finished job whose outcome is being
                # written still shows as running in the table, but holds no slot).
                in_hand = (len(worker.executor.running) for worker in (first, second))
                peak = max(peak, *in_hand)
                await asyncio.sleep(0.01)
        return peak, ran_on.count("second")

    peak, by_second = asyncio.run(scenario())
    assert peak <= 2, f"a worker held {peak} slow jobs for a concurrency of 2"
    assert by_second >= 4, f"the second worker ran {by_second} of 16 jobs"


def test_jobs_held_behind_a_handler_turned_slow_go_to_another_worker(dsn: str) -> None:
    app = pgq.App()
    release = threading.Event()

    ran_on: list[str] = []

    @app.task()
    def quick(n: int, ctx: pgq.JobContext) -> None:
        ran_on.append(ctx.worker)

    @app.task()
    def stuck() -> None:
        release.wait(30)

    async def scenario() -> None:
        holder = make_worker(app, dsn, concurrency=1, name="holder")
        helper = make_worker(app, dsn, concurrency=1, name="helper")
        async with await connect(dsn) as db, running(holder) as holding:
            enqueue_jobs(dsn, [pgq.JobSpec("quick", {"n": n}) for n in range(50)])
            await eventually(
                lambda: holder.stats.counts["succeeded"] == 50, "warm", worker_task=holding
            )
            # Quick jobs have been quick: the holder takes the stuck job and 40 more in one claim.
            enqueue_jobs(
                dsn, [pgq.JobSpec("stuck")] + [pgq.JobSpec("quick", {"n": n}) for n in range(40)]
            )
            try:

                async def held_behind_the_stuck_one() -> bool:
                    # The stuck job runs, and quick ones wait behind it in the holder's hands.
                    in_hand = list(holder.executor.running.values())
                    stuck_runs = any(r.task.name == "stuck" and r.started for r in in_hand)
                    return stuck_runs and any(not r.started for r in in_hand)

                await eventually(
                    held_behind_the_stuck_one, "the holder prefetched jobs behind the stuck one",
                    worker_task=holding,
                )  # fmt: skip
                started = time.monotonic()
                async with running(helper):

                    async def rest_done() -> bool:
                        return await count(db, "task = 'quick' AND status = 'succeeded'") == 90

                    await eventually(rest_done, "the quick jobs ran elsewhere", timeout=20)
                    took = time.monotonic() - started
                    assert not release.is_set()
                    assert "helper" in ran_on
                    assert await count(db, "task = 'quick' AND attempts <> 1") == 0
            finally:
                release.set()
        # Handed back after a second of waiting, then run by the helper: not the 30 s the
        # stuck handler would have made them wait.
        assert took < 10, f"the held jobs waited {took:.1f}s behind the stuck one"

    asyncio.run(scenario())


def test_stopping_hands_back_prefetched_jobs_at_once_with_their_attempts(dsn: str) -> None:
    app = pgq.App()
    release = threading.Event()

    @app.task()
    def quick(n: int) -> None:
        pass

    @app.task()
    def stuck() -> None:
        release.wait(30)

    async def scenario() -> None:
        worker = make_worker(app, dsn, concurrency=1, name="stopping", shutdown_grace_seconds=20)
        async with await connect(dsn) as db:
            task = asyncio.create_task(worker.run())
            try:
                enqueue_jobs(dsn, [pgq.JobSpec("quick", {"n": n}) for n in range(50)])
                await eventually(
                    lambda: worker.stats.counts["succeeded"] == 50, "warm", worker_task=task
                )
                enqueue_jobs(
                    dsn,
                    [pgq.JobSpec("stuck")] + [pgq.JobSpec("quick", {"n": n}) for n in range(40)],
                )

                async def stuck_running() -> bool:
                    return await count(db, "task = 'stuck' AND status = 'running'") == 1

                await eventually(stuck_running, "the stuck job runs", worker_task=task)
                held = await held_by(db, "stopping")
                worker.request_stop()

                async def handed_back() -> bool:
                    return await held_by(db, "stopping") == 1

                # Long before the grace period ends: only the running job is still held.
                await eventually(handed_back, "prefetched jobs handed back", timeout=3)
                queued = await count(db, "task = 'quick' AND status = 'queued' AND attempts = 0")
                release.set()
                await asyncio.wait_for(task, 10)
            finally:
                release.set()
                worker.request_stop()
        assert held > 1, "the worker held prefetched jobs"
        assert queued == held - 1

    asyncio.run(scenario())
