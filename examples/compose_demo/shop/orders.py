"""The shop's application: place an order every ``--interval-seconds`` until stopped.

Run it as ``python -m shop.orders`` (compose.yaml's ``shop`` service). Each
order and its two jobs are written in one transaction, so a job never exists
for an order that was rolled back. It stops on SIGTERM (``docker compose
stop``) or Ctrl-C between two orders. If the database goes away it exits, and
compose restarts it.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import threading
from typing import Any

import psycopg

import pgq
from shop.tasks import charge_card, database_url, send_confirmation

log = logging.getLogger("shop")

CUSTOMERS = ("ada", "grace", "linus", "barbara", "ken", "margaret")

CREATE_ORDERS = """
CREATE TABLE IF NOT EXISTS shop_orders (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer             text NOT NULL,
    total_cents          integer NOT NULL CHECK (total_cents > 0),
    charged_at           timestamptz,
    confirmation_sent_at timestamptz
)
"""
INSERT_ORDER = """
INSERT INTO shop_orders (customer, total_cents) VALUES (%(customer)s, %(total_cents)s)
RETURNING id
"""


def place_order(conn: psycopg.Connection[Any], customer: str) -> str:
    """Store one order and enqueue its jobs, all in one transaction; returns a log line."""
    with conn.transaction():
        row = conn.execute(
            INSERT_ORDER, {"customer": customer, "total_cents": random.randint(500, 20000)}
        ).fetchone()
        assert row is not None
        order_id = int(row[0])
        # Every 10th order has no usable address: its confirmation ends up dead.
        to = "no address given" if order_id % 10 == 0 else f"{customer}@example.com"
        charge = charge_card.enqueue(conn, {"order_id": order_id})
        confirm = send_confirmation.enqueue(conn, {"order_id": order_id, "to": to})
    return (
        f"order {order_id} for {customer}: jobs {charge.id} (charge_card), "
        f"{confirm.id} (send_confirmation)"
    )


def place_orders(interval_seconds: float, stop: threading.Event) -> int:
    """Place orders until ``stop`` is set; returns how many were placed."""
    placed = 0
    with psycopg.connect(database_url()) as conn:
        conn.execute(CREATE_ORDERS)
        conn.commit()
        while not stop.wait(interval_seconds):
            log.info(place_order(conn, CUSTOMERS[placed % len(CUSTOMERS)]))
            placed += 1
    return placed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shop.orders", description=__doc__)
    parser.add_argument("--interval-seconds", type=float, default=1.0, help="time between orders")
    interval_seconds = parser.parse_args().interval_seconds
    if not 0 < interval_seconds <= 3600:
        parser.error(f"--interval-seconds must be > 0 and at most 3600, got {interval_seconds:g}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    # In a container this process is PID 1, which the kernel does not stop on a
    # signal it has no handler for: without these, `docker compose stop` would
    # wait 10 s and then SIGKILL it.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        placed = place_orders(interval_seconds, stop)
    except pgq.ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    log.info("stopped after %d orders", placed)


if __name__ == "__main__":
    main()
