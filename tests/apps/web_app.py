"""The app the dashboard's browser test runs: a receipt mailer that fails until it is "fixed",
a slow export that reports its progress, and a nightly report on a schedule.

``send_receipt`` raises while the file named by ``$PGQ_TEST_RELAY_FIXED`` is missing, so
its one attempt dies with a real traceback; once the test creates the file (the fix
deployed), the requeued job succeeds. ``export_rows`` runs until it is done or cancelled.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pgq

app = pgq.App()


def deliver(order_id: int) -> None:
    if not Path(os.environ["PGQ_TEST_RELAY_FIXED"]).exists():
        raise ConnectionRefusedError(f"mail relay refused the receipt for order {order_id}")


@app.task(max_attempts=1)
def send_receipt(order_id: int) -> None:
    deliver(order_id)


@app.task()
def export_rows(rows: int, ctx: pgq.JobContext) -> dict[str, int]:
    for done in range(0, rows, 10):
        if ctx.cancel_requested:
            break
        ctx.progress({"rows": done, "of": rows})
        time.sleep(0.5)
    return {"rows": rows}


@app.periodic("0 3 * * *", tz="Europe/Berlin")
def nightly_report() -> None: ...
