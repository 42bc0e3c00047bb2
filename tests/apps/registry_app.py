"""An app whose tasks declare defaults, for the task registry's fleet-wide tests.

``always_fails`` fails every attempt, quickly: how many attempts a job got tells
which max_attempts applied. Its queue is one only a worker started with
``--queues fragile`` serves, so a job left in another queue is never claimed.
"""

from __future__ import annotations

import pgq

app = pgq.App()

QUICK_RETRY = pgq.Retry(base_seconds=0.05, cap_seconds=0.1)


@app.task(queue="fragile", priority=7, max_attempts=3, retry=QUICK_RETRY)
def always_fails(n: int = 0) -> None:
    raise RuntimeError(f"always fails ({n})")


@app.task
def noop() -> None:
    pass
