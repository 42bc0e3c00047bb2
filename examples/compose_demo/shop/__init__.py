"""A small shop that `docker compose up` runs as pgq's demo.

``shop.tasks`` holds the pgq App the workers run (``pgq work shop.tasks:app``), and
``shop.orders`` plays the shop's application: it places an order every second and
enqueues the order's jobs in the same transaction.
"""
