"""The shop's pgq tasks: what its worker (`pgq work storefront.tasks:app`) runs."""

from __future__ import annotations

import pgq

app = pgq.App()


@app.task(queue="shipping", max_attempts=3)
def ship_order(order_id: int, item: str) -> dict[str, str]:
    """Hand the order to the carrier; the tracking number becomes the job's result."""
    return {"item": item, "tracking": f"TRK{order_id:06d}"}
