"""An app for `pgq work` processes that return results, report progress and get cancelled.

The long handlers report progress as soon as they start (the test sees they run), then
wait to be cancelled; the sync one leaves a file behind once it saw
``ctx.cancel_requested``, so that the test knows the handler itself heard of it.
"""

from __future__ import annotations

import asyncio
import pathlib
import time

import pgq

app = pgq.App()


@app.task()
def add(a: int, b: int) -> int:
    return a + b


@app.task()
async def wait_async(ctx: pgq.JobContext) -> str:
    ctx.progress({"state": "started"})
    await asyncio.sleep(300)
    return "not cancelled"


@app.task()
def wait_sync(marker: str, ctx: pgq.JobContext) -> str:
    ctx.progress({"state": "started"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if ctx.cancel_requested:
            pathlib.Path(marker).write_text("cancel requested")
            return "stopped early"  # the fence refuses it: the job stays cancelled
        time.sleep(0.02)
    return "not cancelled"
