"""The worker, as parts with one duty each, wired by ``Worker`` (worker.py).

The layers, from the top:

- ``worker.py``: ``Worker``, the facade. It builds the parts and runs them.
- ``settings.py``: every option, checked once and frozen (``WorkerSettings``).
- ``producer.py``: the claim loop: free slots, per-queue limits and fairness.
- ``executor.py``: runs handlers (timeouts, threads) and decides each outcome.
- ``outcome.py``: what an attempt's end means for its job (pure functions).
- ``outcome_writer.py``: writes outcomes in fenced batches.
- ``progress.py``: handlers' progress reports, written in fenced batches.
- ``lease.py``: the leases held, and the heartbeat thread that extends them.
- ``registration.py``: the worker's tasks and its row in the fleet's shared tables.
- ``listen.py``: LISTEN for enqueues and for cancels of running jobs.
- ``maintenance.py``: the thread that runs rescue and pruning.
- ``scheduler.py``: the thread that makes periodic tasks' jobs, one per tick.
- ``shutdown.py``: signals, the grace period, handing jobs back.
- ``stats.py``: counts, metrics and log lines of what the worker did.
- ``database.py``: waiting for the database, the pool and its session settings.
- ``supervisor.py``: ``pgq work --processes N`` (its children run ``pgq work-child``).

Below them, in pgq/: ``queries.sql`` (every statement), ``connection.py``
(reconnects and back-off), ``retry.py``, ``rescue.py``, ``retention.py``,
``schedule.py``.
Nothing below imports from here.
"""

from pgq.worker.worker import Worker

__all__ = ["Worker"]
