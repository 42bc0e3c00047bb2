"""An app for the metrics, logging and rescue tests: jobs whose outcomes are known in advance.

``succeed`` always succeeds, ``fail_once`` fails its first attempt and then
succeeds, ``always_fail`` fails both of its two attempts and ends dead, and
``slow_first_attempt`` sleeps through its first attempt (long enough to be
killed mid-job) and returns at once on later ones. Retries wait a few
milliseconds, so a run settles quickly.
"""

from __future__ import annotations

import time

import pgq

app = pgq.App()

QUICK_RETRY = pgq.Retry(base_seconds=0.01, cap_seconds=0.05)


@app.task(retry=QUICK_RETRY)
def succeed(n: int = 0) -> None:
    """Nothing to do: the job succeeds."""


@app.task(retry=QUICK_RETRY)
def fail_once(ctx: pgq.JobContext) -> None:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails on purpose")


@app.task(max_attempts=2, retry=QUICK_RETRY)
def always_fail() -> None:
    raise RuntimeError("fails on purpose, every time")


@app.task(retry=QUICK_RETRY)
def slow_first_attempt(seconds: float, ctx: pgq.JobContext) -> None:
    if ctx.attempt == 1:
        time.sleep(seconds)
