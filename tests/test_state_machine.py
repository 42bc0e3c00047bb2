"""A model of the job state machine, checked against the real SQL after every step.

hypothesis drives a ``RuleBasedStateMachine`` through the statements pgq itself runs, the
way each part runs them: the application's enqueues (``pgq.enqueue``, ``pgq.enqueue_many``,
with and without dedupe keys, committed or rolled back), three simulated workers that
claim (``claim_jobs``, ``claim_jobs_from_queue``), heartbeat (``extend_leases``), finish in
fenced batches (``finish_succeeded_jobs``, ``finish_jobs``, with the outcomes of
``pgq.worker.outcome``), stall past their lease and rescue (``rescue_stale_jobs``, or its two
statements with other steps in between), and an operator (requeue, requeue_dead, cancel,
retry_now, prune from ``pgq.admin``). After every step it reads ``pgq.jobs`` and checks the
promises of docs/concepts/lifecycle.md and docs/concepts/delivery.md.

The model keeps only what the protocol promises about each job: its status, its attempts,
which claim holds it, whether that lease has expired, the shape of its error history and,
once finished, its age. It never predicts what a statement computes (run_at, backoffs,
claim order): those are checked against the table itself.

Time is simulated, never slept: "a worker stalls" moves its leases' ``locked_until`` into the
past with a direct UPDATE (it stopped heartbeating: a pause, SIGSTOP, a partition), and "an
hour passes" moves every timestamp the statements compare with ``now()`` an hour back.

CI runs a bounded number of examples; ``PGQ_MODEL_EXAMPLES`` and ``PGQ_MODEL_STEPS`` raise
the budget for a long run (docs/reliability.md, "The state-machine model").
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, NamedTuple

import psycopg
import pytest
from hypothesis import HealthCheck, event, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import pgq
from pgq import admin
from pgq.enqueue import EnqueueOptions, EnqueueResult
from pgq.errors import JobNotFoundError, JobStateError
from pgq.job import ClaimedJob
from pgq.queries import array_literal, query
from pgq.rescue import RESCUE_BATCH, rescue_stale_jobs
from pgq.retry import DEFAULT_RETRY, retry_delay
from pgq.worker import outcome as outcomes
from pgq.worker.outcome import Outcome
from pgq.worker.outcome_writer import finish_statements

Conn = psycopg.Connection[tuple[Any, ...]]

SCHEMA = "pgq"
# Far longer than an example runs: a lease expires only when the model lets time pass.
LEASE_SECONDS = 600.0
HOUR = 3600.0
# Retry policies, for a handler's failure and for rescue: one whose retries are due again
# by the next step, so that another worker can claim the job while the first still holds
# its stale lease, and one whose retries wait until an hour has passed (or retry_now).
FAST_RETRY = pgq.Retry(base_seconds=0.001, cap_seconds=0.001)
HANDLER_POLICIES = (FAST_RETRY, pgq.Retry(base_seconds=1, cap_seconds=60))
RESCUE_POLICIES = (FAST_RETRY, DEFAULT_RETRY)
FINISHED = ("succeeded", "dead", "cancelled")
UNFINISHED = ("queued", "running")

# About 8 s on a 2-core machine; see docs/reliability.md for a long run.
EXAMPLES = int(os.environ.get("PGQ_MODEL_EXAMPLES", "50"))
STEPS = int(os.environ.get("PGQ_MODEL_STEPS", "40"))
MODEL_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


@dataclass(frozen=True)
class Worker:
    name: str
    tasks: tuple[str, ...]
    #: None: claims from every queue (claim_jobs); else one queue at a time, as with
    #: ``--queues`` (claim_jobs_from_queue).
    queues: tuple[str, ...] | None = None


WORKERS = (
    Worker("model-worker-0", ("a", "b")),
    Worker("model-worker-1", ("a", "b"), queues=("default", "mail")),
    Worker("model-worker-2", ("b",)),
)
QUEUES = ("default", "mail")
DEDUPE_KEYS = ("k1", "k2")
WORKER_ACTIONS = ("claim", "heartbeat", "finish", "stall", "rescue")
OUTCOME_KINDS = ("succeeded", "failed", "gave_up", "refused", "snoozed", "handed_back")
OPERATOR_ACTIONS = ("requeue", "requeue_dead", "cancel", "retry_now", "prune")
# Ages of prune: whatever finished before now, and a retention in hours or a year. The
# finished jobs' ages are whole hours (an_hour_passes), so none ties with these.
PRUNE_AGES = (0.0, HOUR / 2, 1.5 * HOUR, 365 * 24 * HOUR)

#: How often each rarer path ran over the whole test (steps, fenced finishes...): printed at
#: the end, so that a long run can say what it exercised.
SEEN: Counter[str] = Counter()


def seen(what: str) -> None:
    SEEN[what] += 1
    event(what)


@dataclass(frozen=True)
class NewJob:
    """What the application enqueues: a task and enqueue's options."""

    task: str
    queue: str
    priority: int
    max_attempts: int
    dedupe_key: str | None
    delay: float | None

    def options(self) -> EnqueueOptions:
        return EnqueueOptions(
            queue=self.queue, priority=self.priority, max_attempts=self.max_attempts,
            dedupe_key=self.dedupe_key, delay=self.delay,
        )  # fmt: skip


new_jobs = st.builds(
    NewJob,
    task=st.sampled_from(("a", "b", "a", "b", "c")),  # no worker runs c: it stays queued
    queue=st.sampled_from(QUEUES),
    priority=st.sampled_from((0, 1, 5)),
    max_attempts=st.integers(1, 3),
    dedupe_key=st.sampled_from((None, None, *DEDUPE_KEYS)),
    delay=st.sampled_from((None, None, None, 60.0, 2 * HOUR)),  # mostly due at once
)


@dataclass
class ModelJob:
    """What the protocol promises about one job, and nothing it computes."""

    task: str
    queue: str
    max_attempts: int
    dedupe_key: str | None
    status: str = "queued"
    #: Claims that counted, less refunds (snooze, hand back), since the last requeue.
    attempts: int = 0
    #: (worker, lease token) of the claim that holds it, while running.
    holder: tuple[str, uuid.UUID] | None = None
    lease_expired: bool = False
    #: The kinds of its `errors` entries in order: "error", "requeued", "cancelled".
    history: list[str] = field(default_factory=list)
    #: Simulated seconds since it finished.
    finished_age: float = 0.0

    def move_to(self, status: str) -> None:
        self.status = status
        self.holder = None
        self.lease_expired = False
        self.finished_age = 0.0


class Row(NamedTuple):
    id: int
    status: str
    attempts: int
    max_attempts: int
    locked_by: str | None
    locked_until: datetime | None
    lease_token: uuid.UUID | None
    run_at: datetime
    finished_at: datetime | None
    last_error: str | None
    errors: list[dict[str, Any]]
    dedupe_key: str | None
    task: str
    queue: str
    priority: int


SNAPSHOT = """
SELECT id, status::text, attempts, max_attempts, locked_by, locked_until, lease_token,
       run_at, finished_at, last_error, errors, dedupe_key, task, queue, priority
FROM pgq.jobs
ORDER BY id
"""
EXPIRED_LEASES = "SELECT id FROM pgq.jobs WHERE status = 'running' AND locked_until < now()"
NOT_DUE = "SELECT id FROM pgq.jobs WHERE id = ANY(%s::bigint[]) AND run_at > now()"
NEW_ROWS = """
SELECT id, task, queue, max_attempts, dedupe_key
FROM pgq.jobs
WHERE id <> ALL(%(known)s::bigint[])
ORDER BY id
"""
# The claim's candidates, read in the claim's own transaction (the same now()): the jobs
# it took and the due jobs of its tasks (and queue) that it left behind.
CLAIM_CANDIDATES = """
SELECT id, priority, run_at, run_at <= now() AS due
FROM pgq.jobs
WHERE task = ANY(%(tasks)s::text[])
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (id = ANY(%(claimed)s::bigint[]) OR (status = 'queued' AND run_at <= now()))
"""
# Time passes: every timestamp the statements compare with now() moves an hour back.
AN_HOUR_PASSES = """
UPDATE pgq.jobs
SET run_at = run_at - interval '1 hour',
    locked_until = locked_until - interval '1 hour',
    finished_at = finished_at - interval '1 hour',
    started_at = started_at - interval '1 hour',
    created_at = created_at - interval '1 hour'
"""
# Time passes for some leases only: their worker stopped heartbeating.
EXPIRE_LEASES = (
    "UPDATE pgq.jobs SET locked_until = now() - interval '1 second' WHERE id = ANY(%s::bigint[])"
)


def token_of(job: ClaimedJob) -> uuid.UUID:
    return job.lease_token


def claimed_job(row: tuple[Any, ...]) -> ClaimedJob:
    """A claim_jobs row as the worker reads it (args come back as JSON text)."""
    job_id, queue, task, args_json, attempt, max_attempts, lease_token, created_at, trace = row
    return ClaimedJob(
        job_id, queue, task, json.loads(args_json), attempt, max_attempts, lease_token,
        created_at, trace,
    )  # fmt: skip


def write_outcomes(conn: Conn, batch: list[Outcome]) -> set[int]:
    """One batch as OutcomeWriter._write writes it: successes with finish_succeeded_jobs,
    the rest with finish_jobs, every row fenced by its lease token. The ids written.

    The statements come from the writer's own builder, on purpose: the model writes
    exactly what the worker writes.
    """
    applied: set[int] = set()
    for statement, params in finish_statements(batch, SCHEMA):
        applied.update(row[0] for row in conn.execute(statement, params))
    return applied


@dataclass
class Connections:
    producer: Conn  # the application's: each enqueue is committed or rolled back
    operator: Conn  # autocommit, as the admin CLI's
    checker: Conn  # reads the table after every step, and moves time
    workers: dict[str, Conn]  # autocommit, as the worker's pool and maintenance threads


@contextmanager
def connections(dsn: str) -> Iterator[Connections]:
    opened: list[Conn] = []

    def connect(autocommit: bool = True) -> Conn:
        opened.append(psycopg.connect(dsn, autocommit=autocommit))
        return opened[-1]

    try:
        yield Connections(
            connect(autocommit=False), connect(), connect(),
            {worker.name: connect() for worker in WORKERS},
        )  # fmt: skip
    finally:
        for conn in opened:
            conn.close()


class JobStateMachine(RuleBasedStateMachine):
    #: The connections of a test's database, set by ``on`` for each run.
    db: ClassVar[Connections]

    @classmethod
    def on(cls, db: Connections) -> type[JobStateMachine]:
        """This machine, on these connections (hypothesis makes a new one per example)."""
        return type(cls.__name__, (cls,), {"db": db})

    def __init__(self) -> None:
        super().__init__()
        db = self.db
        # A clean table for each example. Ids keep counting (no RESTART IDENTITY), so an
        # id from an earlier example must never come back either.
        db.checker.execute("TRUNCATE pgq.jobs")
        self.jobs: dict[int, ModelJob] = {}
        self.pruned: set[int] = set()
        self.rolled_back: set[int] = set()
        #: Every lease each worker still holds, live or stale, until it finishes the job.
        self.held: dict[str, list[ClaimedJob]] = {worker.name: [] for worker in WORKERS}
        self.stalled: set[str] = set()
        #: What each worker's slow rescue read (job, attempts, max, delay) and has not written.
        self.stale_reads: dict[str, list[tuple[int, int, int, float | None]]] = {}
        self.last_rows: dict[int, Row] = {}
        #: The jobs the last step may have changed, those whose attempts it may lower, and
        #: those it made due at once (hand back, requeue, retry_now).
        self.touched: set[int] = set()
        self.given_back: set[int] = set()
        self.made_due: set[int] = set()
        self.args = itertools.count()
        #: How far this example got along the fence's hardest path: a lease lost to rescue
        #: while its worker still holds it (1), the job claimed again (2), the old lease's
        #: finish or heartbeat fenced (4 each). hypothesis steers towards higher scores.
        self.fence_score = 0
        SEEN["examples"] += 1

    def teardown(self) -> None:
        self.db.producer.rollback()
        target(float(self.fence_score), label="the fence's hardest path")

    # -- what the model knows ----------------------------------------------------------------

    def live(self, worker: str, claimed: ClaimedJob) -> bool:
        """Does this lease still hold its job (the last claim, not yet finished or rescued)?"""
        job = self.jobs.get(claimed.id)
        return job is not None and job.holder == (worker, claimed.lease_token)

    def dedupe_holder(self, key: str | None) -> int | None:
        """The unfinished job holding this dedupe key, if any."""
        for job_id, job in self.jobs.items():
            if key is not None and job.dedupe_key == key and job.status in UNFINISHED:
                return job_id
        return None

    def expired_running(self) -> set[int]:
        return {i for i, job in self.jobs.items() if job.status == "running" and job.lease_expired}

    def ever_seen(self) -> set[int]:
        return self.jobs.keys() | self.pruned | self.rolled_back

    def held_tokens(self) -> set[uuid.UUID]:
        return {lease.lease_token for held in self.held.values() for lease in held}

    def touch(self, job_ids: Iterable[int]) -> None:
        self.touched.update(job_ids)

    def add_job(self, job_id: int, task: str, queue: str, most: int, key: str | None) -> None:
        assert job_id not in self.ever_seen(), f"id {job_id} came back"
        self.jobs[job_id] = ModelJob(task, queue, most, key)

    def record_failure(self, job_id: int) -> None:
        """A failed attempt (the handler's, or a lost lease): used, and one error recorded."""
        job = self.jobs[job_id]
        job.history.append("error")
        job.move_to("dead" if job.attempts >= job.max_attempts else "queued")

    # -- the application ---------------------------------------------------------------------

    @rule(many=st.booleans(), data=st.data())
    def application(self, many: bool, data: st.DataObject) -> None:
        """One job (committed, or rolled back with the application's transaction), or many.

        There is one rule per actor (the application, each worker, the clock, the operator),
        each drawing its action: hypothesis picks among rules evenly and disables a random
        subset of them in each example (swarm testing), and a rule per action would leave
        few examples where every step of a long path (claim, stall, rescue, claim again,
        finish late) is enabled.
        """
        if many:
            news = data.draw(st.lists(new_jobs, min_size=1, max_size=4))
            self.enqueue_many(news, data.draw(st.booleans(), label="return_ids"))
        else:
            new = data.draw(new_jobs)
            self.enqueue(new, commit=data.draw(st.sampled_from((True, True, True, False))))

    def enqueue(self, new: NewJob, commit: bool) -> None:
        holder = self.dedupe_holder(new.dedupe_key)
        args = {"n": next(self.args)}
        result = pgq.enqueue(self.db.producer, new.task, args, **new.options())
        if holder is not None:
            seen("enqueue: an unfinished job held the dedupe key")
            assert result == EnqueueResult(holder, created=False)
        else:
            assert result.created and result.id not in self.ever_seen()
        if not commit:
            self.db.producer.rollback()
            if result.created:
                self.rolled_back.add(result.id)
            return
        self.db.producer.commit()
        if result.created:
            self.add_job(result.id, new.task, new.queue, new.max_attempts, new.dedupe_key)

    @initialize(news=st.lists(new_jobs, min_size=1, max_size=6), return_ids=st.booleans())
    def jobs_to_start_with(self, news: list[NewJob], return_ids: bool) -> None:
        """Every example starts with work for the workers."""
        self.enqueue_many(news, return_ids)

    def enqueue_many(self, news: list[NewJob], return_ids: bool) -> None:
        keys = {new.dedupe_key for new in news if new.dedupe_key is not None}
        free_keys = {key for key in keys if self.dedupe_holder(key) is None}
        specs = [pgq.JobSpec(n.task, {"n": next(self.args)}, options=n.options()) for n in news]
        result = pgq.enqueue_many(self.db.producer, specs, return_ids=return_ids)
        self.db.producer.commit()

        rows = self.db.checker.execute(NEW_ROWS, {"known": list(self.jobs)}).fetchall()
        new_ids = [row[0] for row in rows]
        assert result == (new_ids if return_ids else len(new_ids))
        # Every job without a key; one per key no unfinished job held, the batch included.
        assert len(rows) == sum(new.dedupe_key is None for new in news) + len(free_keys)
        assert {row[4] for row in rows} - {None} == free_keys
        wanted = Counter((n.task, n.queue, n.max_attempts, n.dedupe_key) for n in news)
        assert not Counter(tuple(row[1:]) for row in rows) - wanted
        for job_id, task, queue, most, key in rows:
            self.add_job(job_id, task, queue, most, key)

    # -- the workers -------------------------------------------------------------------------

    # One rule per worker: hypothesis disables a random subset of rules in each example
    # (swarm testing), so some examples run one or two workers, most run several.

    @rule(action=st.sampled_from(WORKER_ACTIONS), data=st.data())
    def worker_0(self, action: str, data: st.DataObject) -> None:
        self.worker_step(WORKERS[0], action, data)

    @rule(action=st.sampled_from(WORKER_ACTIONS), data=st.data())
    def worker_1(self, action: str, data: st.DataObject) -> None:
        self.worker_step(WORKERS[1], action, data)

    @rule(action=st.sampled_from(WORKER_ACTIONS), data=st.data())
    def worker_2(self, action: str, data: st.DataObject) -> None:
        self.worker_step(WORKERS[2], action, data)

    def worker_step(self, worker: Worker, action: str, data: st.DataObject) -> None:
        """One of a worker's duties: claim, heartbeat, finish a batch, stall past its lease,
        or rescue (its maintenance thread). A stalled worker resumes: its heartbeat runs
        first, or its handlers, which ran on while it was stopped, finish together."""
        name = worker.name
        if name in self.stalled:
            self.stalled.remove(name)
            if action == "heartbeat":
                self.heartbeat(name)
            else:
                self.finish(name, data, self.held[name])
        elif action == "rescue":
            self.rescuer(name, data)
        elif action == "claim" or not self.held[name]:
            self.claim(worker, data.draw(st.integers(1, 3), label="limit"), data)
        elif action == "heartbeat":
            self.heartbeat(name)
        elif action == "finish":
            self.finish(name, data)
        else:
            self.stall(name)

    def claim(self, worker: Worker, limit: int, data: st.DataObject) -> None:
        """As the producer claims: its tasks, its lease, its name, a limit (and a queue)."""
        queue = None if worker.queues is None else data.draw(st.sampled_from(worker.queues))
        params: dict[str, Any] = {
            "tasks": array_literal(worker.tasks),
            "lease_seconds": LEASE_SECONDS,
            "worker": worker.name,
            "limit": limit,
        }
        name = "claim_jobs" if queue is None else "claim_jobs_from_queue"
        if queue is not None:
            params["queue"] = queue
        conn = self.db.workers[worker.name]
        with conn.transaction():
            claimed = [claimed_job(row) for row in conn.execute(query(name, SCHEMA), params)]
            check = {"tasks": params["tasks"], "queue": queue, "claimed": [c.id for c in claimed]}
            candidates = conn.execute(CLAIM_CANDIDATES, check).fetchall()
        self.check_claim_order(claimed, candidates, limit)
        for job in claimed:
            if any(old.id == job.id for held in self.held.values() for old in held):
                seen("claim: a worker still holds an old lease of the job")
                self.fence_score += 2
            model = self.jobs[job.id]
            assert model.status == "queued", f"claimed job {job.id} was {model.status}"
            assert job.task in worker.tasks and queue in (None, job.queue)
            assert job.attempt == model.attempts + 1 <= job.max_attempts == model.max_attempts
            model.status, model.attempts = "running", job.attempt
            model.holder, model.lease_expired = (worker.name, job.lease_token), False
            self.held[worker.name].append(job)
        self.touch(job.id for job in claimed)
        seen("claim: claimed" if claimed else "claim: nothing due")

    @staticmethod
    def check_claim_order(
        claimed: list[ClaimedJob], candidates: list[tuple[Any, ...]], limit: int
    ) -> None:
        """Only due jobs; the highest priority, then the earliest run_at, then the lowest id."""
        assert len(claimed) <= limit
        ids = {job.id for job in claimed}
        taken = [(-priority, run_at, i) for i, priority, run_at, due in candidates if i in ids]
        left = [(-priority, run_at, i) for i, priority, run_at, _ in candidates if i not in ids]
        assert all(due for i, _, _, due in candidates if i in ids), "claimed a job not yet due"
        if len(claimed) < limit:
            assert not left, f"a short claim left due jobs behind: {left}"
        assert not taken or not left or max(taken) < min(left), (taken, left)

    def heartbeat(self, worker: str) -> None:
        """As Heartbeat.tick: one extend_leases for every lease the worker holds.

        A lease the heartbeat finds lost stays held: a sync handler runs on, and its
        outcome may already wait for the writer. Its finish must be fenced too.
        """
        held = self.held[worker]
        params = {
            "ids": array_literal(job.id for job in held),
            "lease_tokens": array_literal(job.lease_token for job in held),
            "lease_seconds": LEASE_SECONDS,
        }
        conn = self.db.workers[worker]
        extended = {
            (job_id, token)
            for job_id, token in conn.execute(query("extend_leases", SCHEMA), params)
        }
        live = {(job.id, job.lease_token) for job in held if self.live(worker, job)}
        self.count_stale(worker, held, "heartbeat")
        assert extended == live
        for job_id, _ in live:
            self.jobs[job_id].lease_expired = False
        self.touch(job_id for job_id, _ in live)

    def finish(
        self, worker: str, data: st.DataObject, picked: list[ClaimedJob] | None = None
    ) -> None:
        """One batch of outcomes for leases the worker holds, live or stale."""
        held = self.held[worker]
        if picked is None:
            unique = st.lists(st.sampled_from(held), min_size=1, max_size=3, unique_by=token_of)
            picked = data.draw(unique)
        kinds = [data.draw(st.sampled_from(OUTCOME_KINDS), label=f"job {j.id}") for j in picked]
        batch = [make_outcome(job, kind, data) for job, kind in zip(picked, kinds, strict=True)]

        applied = write_outcomes(self.db.workers[worker], batch)

        live = [
            (job, kind) for job, kind in zip(picked, kinds, strict=True) if self.live(worker, job)
        ]
        self.count_stale(worker, picked, "finish")
        assert applied == {job.id for job, _ in live}
        for job, kind in live:
            seen(f"finish: {kind}")
            self.record_outcome(job.id, kind)
            if kind == "handed_back":
                self.made_due.add(job.id)
        # Released whether written or refused, as the outcome writer releases them.
        tokens = {job.lease_token for job in picked}
        self.held[worker] = [job for job in held if job.lease_token not in tokens]
        self.touch(job.id for job, _ in live)

    def count_stale(self, worker: str, leases: list[ClaimedJob], step: str) -> None:
        """Count the stale leases of a finish or heartbeat. The rarest, the finish of a job
        that another claim holds now, is what teardown steers hypothesis towards."""
        for lease in leases:
            job = self.jobs.get(lease.id)
            if job is not None and job.holder not in (None, (worker, lease.lease_token)):
                seen(f"{step}: fenced, another claim holds the job")
                self.fence_score += 4
            elif not self.live(worker, lease):
                seen(f"{step}: fenced, the job is no longer running")

    def record_outcome(self, job_id: int, kind: str) -> None:
        job = self.jobs[job_id]
        if kind == "succeeded":
            job.move_to("succeeded")
        elif kind == "failed":
            self.record_failure(job_id)
        elif kind in ("gave_up", "refused"):  # dead at once: no retry can help
            job.history.append("error")
            job.move_to("dead")
        else:  # snoozed or handed back: the attempt is given back
            job.attempts -= 1
            self.given_back.add(job_id)
            job.move_to("queued")

    # -- time --------------------------------------------------------------------------------

    def stall(self, worker: str) -> None:
        """Time passes for this worker's leases only: it stopped heartbeating (a long pause,
        SIGSTOP, a partition) for longer than its lease. A direct UPDATE, never a sleep."""
        self.stalled.add(worker)
        mine = [j.id for j in self.held[worker] if self.live(worker, j)]
        self.db.checker.execute(EXPIRE_LEASES, [mine])
        for job_id in mine:
            self.jobs[job_id].lease_expired = True
        self.touch(mine)

    @rule()
    def an_hour_passes(self) -> None:
        """Time passes for every job: leases expire, backoffs and schedules come due, and
        finished jobs age towards pruning. A direct UPDATE, never a sleep."""
        self.db.checker.execute(AN_HOUR_PASSES)
        for job in self.jobs.values():
            if job.status == "running":
                job.lease_expired = True
            elif job.status in FINISHED:
                job.finished_age += HOUR
        self.touch(self.jobs)

    # -- rescue ------------------------------------------------------------------------------

    def rescuer(self, worker: str, data: st.DataObject) -> None:
        """A whole sweep, or one statement of a slow sweep: its read, or its write, with any
        other steps in between, another worker's sweep included (the races rescue_jobs
        guards against). The policy: the default, as workers rescue, or one whose retries
        are due at once, so that the job can be claimed again while its old lease is held."""
        if worker in self.stale_reads:
            self.slow_rescuer_writes(worker)
            return
        policy = data.draw(st.sampled_from(RESCUE_POLICIES), label="policy")
        if data.draw(st.booleans(), label="slow"):
            self.slow_rescuer_reads(worker, policy)
        else:
            self.rescue(worker, policy)

    def rescue(self, worker: str, policy: pgq.Retry) -> None:
        """Exactly the running jobs whose lease expired; never a live lease."""
        rescued = rescue_stale_jobs(self.db.workers[worker], SCHEMA, policy)
        assert {job.id for job in rescued} == self.expired_running()
        for job in rescued:
            self.record_rescue(job.id, job.attempts, job.status)

    def slow_rescuer_reads(self, worker: str, policy: pgq.Retry) -> None:
        """find_stale_jobs, and each job's fate decided as pgq.rescue decides it."""
        conn = self.db.workers[worker]
        stale = conn.execute(query("find_stale_jobs", SCHEMA), {"limit": RESCUE_BATCH}).fetchall()
        self.stale_reads[worker] = [
            (job_id, attempts, most, retry_delay(attempts, most, policy))
            for job_id, attempts, most, *_registered_policy in stale
        ]
        assert {row[0] for row in stale} == self.expired_running()

    def slow_rescuer_writes(self, worker: str) -> None:
        """rescue_jobs with the decisions made at the read: a job whose lease was extended,
        that finished, or whose attempts changed since is left alone."""
        stale = self.stale_reads.pop(worker)
        params = {
            "ids": [job[0] for job in stale],
            "attempts": [job[1] for job in stale],
            "max_attempts": [job[2] for job in stale],
            "delays_seconds": [job[3] for job in stale],
        }
        rows = self.db.workers[worker].execute(query("rescue_jobs", SCHEMA), params).fetchall()
        expected = {
            job_id
            for job_id, read_attempts, _, _ in stale
            if (job := self.jobs.get(job_id)) is not None
            and job.status == "running" and job.lease_expired and job.attempts == read_attempts
        }  # fmt: skip
        if len(expected) < len(stale):
            seen("slow rescue: a job that changed since the read was left alone")
        assert {row[0] for row in rows} == expected
        for job_id, _, _, attempts, status in rows:
            self.record_rescue(job_id, attempts, status)

    def record_rescue(self, job_id: int, attempts: int, status: str) -> None:
        """The lost attempt stays counted: queued again while attempts remain, else dead."""
        job = self.jobs[job_id]
        self.fence_score += job.holder is not None and job.holder[1] in self.held_tokens()
        assert attempts == job.attempts
        assert status == ("dead" if attempts >= job.max_attempts else "queued")
        seen(f"rescue: {status}")
        self.record_failure(job_id)
        self.touch([job_id])

    # -- the operator ------------------------------------------------------------------------

    @rule(action=st.sampled_from(OPERATOR_ACTIONS), data=st.data())
    def operator(self, action: str, data: st.DataObject) -> None:
        """One of the operator's actions, on a job in any status (or one already pruned)."""
        if action == "requeue_dead":
            self.operator_requeues_dead_jobs()
            return
        if action == "prune":
            status = data.draw(st.sampled_from(FINISHED))
            self.operator_prunes(status, data.draw(st.sampled_from(PRUNE_AGES)))
            return
        if not self.jobs and not self.pruned:
            return
        job_id = data.draw(st.sampled_from(sorted(self.jobs.keys() | self.pruned)))
        if action == "requeue":
            self.operator_requeue(job_id)
        elif action == "cancel":
            self.operator_cancel(job_id)
        else:
            self.operator_retry_now(job_id)

    def operate(self, action: Callable[[Conn, int], None], job_id: int, allowed: bool) -> None:
        if job_id in self.pruned:
            with pytest.raises(JobNotFoundError):
                action(self.db.operator, job_id)
        elif allowed:
            action(self.db.operator, job_id)
            self.touch([job_id])
        else:
            with pytest.raises(JobStateError):
                action(self.db.operator, job_id)

    def requeued(self, job_id: int) -> None:
        self.made_due.add(job_id)
        job = self.jobs[job_id]
        job.history.append("requeued")
        job.attempts = 0
        job.move_to("queued")
        self.given_back.add(job_id)

    def operator_requeue(self, job_id: int) -> None:
        """Dead or cancelled only, and not while an unfinished job holds its dedupe key."""
        job = self.jobs.get(job_id)
        finished = job is not None and job.status in ("dead", "cancelled")
        allowed = finished and job is not None and self.dedupe_holder(job.dedupe_key) is None
        if finished and not allowed:
            seen("requeue: refused, an unfinished job holds the dedupe key")
        self.operate(admin.requeue, job_id, allowed)
        if allowed:
            seen("requeue: requeued")
            self.requeued(job_id)

    def operator_requeues_dead_jobs(self) -> None:
        """Every dead job; of those sharing a dedupe key no unfinished job holds, one."""
        dead = {job_id: job for job_id, job in self.jobs.items() if job.status == "dead"}
        requeued = admin.requeue_dead(self.db.operator, admin.DeadJobFilter())
        assert len(set(requeued)) == len(requeued) and set(requeued) <= dead.keys()
        assert {i for i, job in dead.items() if job.dedupe_key is None} <= set(requeued)
        for key in DEDUPE_KEYS:
            sharing = {i for i, job in dead.items() if job.dedupe_key == key}
            free = sharing and self.dedupe_holder(key) is None
            assert len(sharing & set(requeued)) == (1 if free else 0), key
        for job_id in requeued:
            seen("requeue_dead: requeued")
            self.requeued(job_id)
        self.touch(requeued)

    def operator_cancel(self, job_id: int) -> None:
        """Queued or running (edge running -> cancelled): the holder's later finish is fenced."""
        job = self.jobs.get(job_id)
        allowed = job is not None and job.status in ("queued", "running")
        self.operate(admin.cancel, job_id, allowed)
        if job is not None and allowed:
            seen(f"cancel: cancelled while {job.status}")
            job.history.append("cancelled")
            job.move_to("cancelled")

    def operator_retry_now(self, job_id: int) -> None:
        """Queued only, and it stays queued (not an edge)."""
        job = self.jobs.get(job_id)
        allowed = job is not None and job.status == "queued"
        self.operate(admin.retry_now, job_id, allowed)
        if allowed:
            self.made_due.add(job_id)

    def operator_prunes(self, status: str, older_than: float) -> None:
        """Exactly the jobs of that status finished longer ago than the age."""
        due = {
            job_id
            for job_id, job in self.jobs.items()
            if job.status == status and job.finished_age >= older_than
        }
        assert admin.prune(self.db.operator, status, older_than) == len(due)
        for job_id in due:
            seen("prune: pruned")
            del self.jobs[job_id]
        self.pruned |= due

    # -- the invariants, read from the table after every step -------------------------------

    @invariant()
    def the_table_keeps_the_protocol(self) -> None:
        rows = {row.id: row for row in map(Row._make, self.db.checker.execute(SNAPSHOT))}
        expired = {row[0] for row in self.db.checker.execute(EXPIRED_LEASES)}
        # Nothing appears but through a committed enqueue; nothing vanishes but through
        # prune; a pruned or rolled-back id never appears again.
        assert rows.keys() == self.jobs.keys()
        assert not rows.keys() & (self.pruned | self.rolled_back)
        for job_id, row in rows.items():
            check_job(row, self.jobs[job_id])
        # Leases expire only when time passes, never by themselves or by a heartbeat.
        assert expired == self.expired_running()
        # A job handed back, requeued or retried now is due at once.
        assert not self.db.checker.execute(NOT_DUE, [list(self.made_due)]).fetchall()
        self.check_holders(rows)
        self.check_frame(rows)
        self.last_rows, self.touched, self.given_back, self.made_due = rows, set(), set(), set()
        SEEN["checks"] += 1

    def check_holders(self, rows: dict[int, Row]) -> None:
        """A job has at most one holder: of all leases the workers hold, at most one is live."""
        for row in rows.values():
            holders = [
                worker
                for worker, held in self.held.items()
                for job in held
                if job.id == row.id
                and row.status == "running"
                and job.lease_token == row.lease_token
            ]
            assert holders in ([], [row.locked_by]), (row.id, holders)

    def check_frame(self, rows: dict[int, Row]) -> None:
        """A step changes only the jobs it acts on: a stale finish or heartbeat changes
        nothing. Attempts go up by one (a claim), or down only through a refund or a requeue."""
        for job_id, before in self.last_rows.items():
            after = rows.get(job_id)
            if after is None or after == before:
                continue
            assert job_id in self.touched, f"job {job_id} changed:\n{before}\n{after}"
            if after.attempts < before.attempts:
                assert job_id in self.given_back, (before, after)
            assert after.attempts <= before.attempts + 1, (before, after)


def make_outcome(job: ClaimedJob, kind: str, data: st.DataObject) -> Outcome:
    """The outcome the executor would decide, from the pure functions of pgq.worker.outcome."""
    if kind == "succeeded":
        return outcomes.succeeded(job)
    if kind == "failed":
        policy = data.draw(st.sampled_from(HANDLER_POLICIES))
        return outcomes.failed(job, RuntimeError("the handler failed"), policy)
    if kind == "gave_up":
        return outcomes.gave_up(job, "no retry can help")
    if kind == "refused":
        return outcomes.refused(job, "its args cannot be decoded by Python")
    if kind == "snoozed":
        return outcomes.snoozed(job, data.draw(st.sampled_from((0.0, 30.0, 2 * HOUR))))
    return outcomes.handed_back(job)


def check_job(row: Row, job: ModelJob) -> None:
    # Exactly one status, the one the protocol says.
    assert row.status == job.status, (row, job)
    # Attempts: claims that counted, less refunds, since the last requeue; never above max.
    assert row.attempts == job.attempts, (row, job)
    assert 0 <= row.attempts <= row.max_attempts
    if row.status == "queued":
        assert row.attempts < row.max_attempts, f"queued with no attempt left: {row}"
    # A running job holds one lease, its claim's; no other job holds any.
    if row.status == "running":
        assert row.locked_until is not None and row.lease_token is not None
        assert job.holder == (row.locked_by, row.lease_token), (row, job)
    else:
        assert row.locked_by is None and row.locked_until is None, row
    assert (row.finished_at is not None) == (row.status in FINISHED), row
    if row.status == "dead":
        assert row.last_error, row
    check_history(row, job)


def check_history(row: Row, job: ModelJob) -> None:
    """One {"error": ...} entry per failed attempt, one {"event": ...} per operator action.

    Since the last requeue, the failures are attempts 1, 2, ... n: every attempt counted
    failed, except a running job's current one and a succeeded job's last.
    """
    kinds = []
    for entry in row.errors:
        if "error" in entry:
            assert "event" not in entry and entry["worker"], entry
            kinds.append("error")
        else:
            assert entry["event"] in ("requeued", "cancelled") and entry["by"], entry
            kinds.append(entry["event"])
    assert kinds == job.history, (row, job)
    since = row.errors[max((i for i, k in enumerate(kinds) if k == "requeued"), default=-1) + 1 :]
    failures = [entry["attempt"] for entry in since if "error" in entry]
    # A job cancelled while it ran: its last attempt counted, and did not fail.
    cancelled_running = row.status == "cancelled" and since[-1].get("previous_status") == "running"
    unfinished_attempt = row.status in ("running", "succeeded") or cancelled_running
    assert failures == list(range(1, row.attempts + 1 - unfinished_attempt)), row


def test_the_real_statements_keep_the_state_machines_promises(dsn: str) -> None:
    with connections(dsn) as db:
        run_state_machine_as_test(JobStateMachine.on(db), settings=MODEL_SETTINGS)
    print("what the model exercised:", dict(sorted(SEEN.items())))
