"""The app the dashboard's browser test runs: a receipt mailer that fails until it is "fixed".

``send_receipt`` raises while the file named by ``$PGQ_TEST_RELAY_FIXED`` is missing, so
its one attempt dies with a real traceback; once the test creates the file (the fix
deployed), the requeued job succeeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pgq

app = pgq.App()


def deliver(order_id: int) -> None:
    if not Path(os.environ["PGQ_TEST_RELAY_FIXED"]).exists():
        raise ConnectionRefusedError(f"mail relay refused the receipt for order {order_id}")


@app.task(max_attempts=1)
def send_receipt(order_id: int) -> None:
    deliver(order_id)
