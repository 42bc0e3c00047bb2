"""The producer: keeps a backlog of due jobs queued while the faults happen.

A backlog rather than a fixed batch enqueued up front: every worker stays busy
whatever the machine's speed (it is shared with other test runs), so a fault
always lands mid-run.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg

import pgq

NORMAL_TASKS = ("sleepy", "sleepy_async")
DOOMED_TASK = "doomed"
DOOMED_MAX_ATTEMPTS = 3
# A job whose args Python cannot decode (a 5,001-digit number), written straight into
# the table as a client that skips pgq's checks could: the worker that claims it must
# end it dead, never run it, and go on with the rest of its batch.
POISON_TASK = "poison"
POISON_ARGS = '{"n": 1e5000}'
# Generous, so that a run of bad luck under faults never makes a normal job dead:
# a dead normal job counts as lost.
NORMAL_MAX_ATTEMPTS = 20
ASYNC_SHARE = 0.2


class Producer(threading.Thread):
    """Keeps about ``backlog`` due jobs queued until stopped; survives database outages.

    A handful of ``doomed`` jobs (one per batch until ``doomed`` are in), each with a
    ``poison`` row beside it, check dead handling under the same faults.
    """

    def __init__(self, dsn: str, *, backlog: int, doomed: int, seed: int) -> None:
        super().__init__(name="reliability-producer", daemon=True)
        self.dsn = dsn
        self.backlog = backlog
        self.doomed_quota = doomed
        self.random = random.Random(seed)
        self.ids: list[int] = []
        self.doomed_ids: list[int] = []
        self.failed_enqueues = 0  # batches a fault interrupted
        self._stop_event = threading.Event()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    @property
    def enqueued(self) -> int:
        return len(self.ids)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._top_up()
            except psycopg.Error:
                # The database is away (a fault): the jobs of a failed commit may or
                # may not exist, so the checks take pgq.jobs as the list of jobs.
                self.failed_enqueues += 1
                self._close()
                self._stop_event.wait(0.2)
                continue
            self._stop_event.wait(0.1)
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _top_up(self) -> None:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
        row = self._conn.execute(
            "SELECT count(*) FROM pgq.jobs WHERE status = 'queued' AND run_at <= now()"
        ).fetchone()
        assert row is not None
        missing = self.backlog - int(row[0])
        if missing < self.backlog // 4:
            return
        specs = [self._spec() for _ in range(min(missing, 2_000))]
        with_doomed = len(self.doomed_ids) < self.doomed_quota
        if with_doomed:
            specs.append(pgq.JobSpec(DOOMED_TASK, max_attempts=DOOMED_MAX_ATTEMPTS))
        with self._conn.transaction():
            ids = pgq.enqueue_many(self._conn, specs)
            if with_doomed:
                poison = self._conn.execute(
                    "INSERT INTO pgq.jobs (task, args) VALUES (%s, %s::jsonb) RETURNING id",
                    [POISON_TASK, POISON_ARGS],
                ).fetchone()
                assert poison is not None
                ids.append(int(poison[0]))
        if with_doomed:
            self.doomed_ids.append(ids[-2])
        self.ids.extend(ids)

    def _spec(self) -> pgq.JobSpec:
        task = NORMAL_TASKS[1] if self.random.random() < ASYNC_SHARE else NORMAL_TASKS[0]
        ms = round(self.random.uniform(1.0, 5.0), 2)
        return pgq.JobSpec(task, {"ms": ms}, max_attempts=NORMAL_MAX_ATTEMPTS)
