"""Reproductions of the weaknesses the fault runs found (docs/reliability.md explains them).

    .venv/bin/python -m tests.reliability.repro NAME [NAME...]

Each one sets up the smallest lab that shows one weakness, prints what it measured
and says whether it reproduced. They are not part of the test suite: they show a
problem until src/ is fixed, and several depend on timing. To try a fix, put the
patched package first on the path (``PYTHONPATH=/path/to/patched``): the workers
inherit it.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime

import psycopg

import pgq
from pgq.worker.prefetch import MAX_HELD

from .checks import unexplained_rescues
from .faults import sigkill_workers
from .lab import Fault, FleetOptions, Lab


def _enqueue(lab: Lab, specs: list[pgq.JobSpec]) -> None:
    with psycopg.connect(lab.admin_dsn) as conn:
        pgq.enqueue_many(conn, specs)


def _first_finish_after(lab: Lab, moment: float, timeout: float = 120) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = lab.query(
            "SELECT extract(epoch FROM min(at))::float8 FROM finishes WHERE at > to_timestamp(%s)",
            [moment],
        )[0]
        if row[0] is not None:
            return float(row[0]) - moment
        lab.sleep(0.2)
    return None


def deadlock() -> bool:
    """A worker's heartbeat (extend_leases) and its own outcome write (finish_jobs) deadlock.

    Both update the same rows (a lease is extended until its outcome is written) and
    neither locks them in a fixed order. Short leases (frequent heartbeats) and many
    small jobs make it likely within half a minute.
    """
    with Lab(FleetOptions(workers=2, concurrency=16, lease_seconds=0.6)) as lab:
        lab.start_fleet()
        lab.start_producer(backlog=3_000, doomed=0)
        lab.sleep(30)
        lab.stop_producer()
        lab.wait_drained(120)
        log = lab.cluster.log_file.read_text(errors="replace")
        blocks = log.split("ERROR:  deadlock detected")[1:]
        both = sum("SET locked_until" in b[:3000] and "SET status" in b[:3000] for b in blocks)
        print(f"deadlocks in 30 s: {len(blocks)}, between extend_leases and finish_jobs: {both}")
        print(f"server log: {lab.log_dir / 'postgresql.log'}")
        return both > 0


def heartbeat_after_outage() -> bool:
    """After an outage, the heartbeat's backoff (up to 10 s) outlasts a short lease.

    Jobs claimed once the database is back are not extended in time, and a worker the
    outage did not touch (here: one started after it) rescues them while they run.
    """
    outage = 7.0
    with Lab(FleetOptions(workers=2, concurrency=2, lease_seconds=2.0)) as lab:
        lab.start_fleet()
        _enqueue(lab, [pgq.JobSpec("sleepy", {"ms": 3000}, max_attempts=20) for _ in range(40)])
        lab.sleep(1.5)
        at = time.time()
        lab.cluster.stop("immediate")
        time.sleep(outage)
        lab.cluster.start()
        end = time.time()
        lab.add_worker()  # untouched by the outage: it sweeps every second
        lab.wait_drained(180)
        found = unexplained_rescues(lab, [Fault("restart-outage", at, end, lab.worker_pids())])
        print(f"outage {end - at:.1f}s; leases claimed after it and rescued anyway: {len(found)}")
        for line in found:
            print(f"  {line}")
        return bool(found)


def reconnect_after_outage() -> bool:
    """After a long outage, the worker's pool reconnects about as late as the outage lasted.

    psycopg_pool doubles the delay between reconnect attempts up to reconnect_timeout,
    which the worker sets to 3600 s: after 40 s down, the next attempt may be 20-30 s
    after the server is back, and claims wait for it.
    """
    outage = 40.0
    with Lab(FleetOptions(workers=2, concurrency=4, lease_seconds=30.0)) as lab:
        lab.start_fleet()
        lab.start_producer(backlog=2_000, doomed=0)
        lab.sleep(2)
        lab.cluster.stop("immediate")
        time.sleep(outage)
        lab.cluster.start()
        back = time.time()
        first = _first_finish_after(lab, back)
        shown = "none within 120 s" if first is None else f"{first:.2f}s"
        print(f"outage {outage:g}s: first finish {shown} after the server was back")
        return first is None or first > 10


def leases_held() -> bool:
    """A worker keeps claiming while its outcomes are unwritten: leases pile up.

    They pile up far past what it may hold (its concurrency and prefetch), and every
    one of them is re-run if the worker dies then. Held jobs plus at most as many
    unwritten outcomes is the bound.
    """
    options = FleetOptions(workers=3, concurrency=4)
    with Lab(options) as lab:
        lab.start_fleet()
        lab.start_producer(backlog=2_000, doomed=0)
        lab.sleep(2)
        for _ in range(4):
            lab.terminate_workers()
            lab.sleep(2.5)
        print(f"--concurrency {options.concurrency}: most leases one worker held: {lab.max_held}")
        return lab.max_held > 2 * MAX_HELD


def claim_backoff() -> bool:
    """The claim loop's backoff is cut short by job wake-ups.

    After one blip it retries many times at once, each failure doubling the delay it
    announces, which reaches the 10 s cap within a second.
    """
    with Lab(FleetOptions(workers=1, concurrency=8)) as lab:
        lab.start_fleet()
        lab.start_producer(backlog=2_000, doomed=0)
        for _ in range(5):
            lab.sleep(2)
            lab.terminate_workers()
        lab.sleep(2)
        failures: list[tuple[datetime, float]] = []
        for _, entry, _ in lab.worker_log_lines():
            message = str((entry or {}).get("message", ""))
            match = re.search(r"claim failed.*retrying in ([0-9.]+)s", message)
            if match and entry is not None:
                failures.append((datetime.fromisoformat(entry["time"]), float(match.group(1))))
        print("claim failures after five pg_terminate_backend:")
        early = 0
        for (before, delay), (after, _) in itertools.pairwise(failures):
            waited = (after - before).total_seconds()
            if waited < delay / 2:
                early += 1
                print(f"  announced 'retrying in {delay:g}s' at {before:%H:%M:%S.%f}, "
                      f"retried after {waited * 1000:.0f} ms")  # fmt: skip
        print(f"  {len(failures)} failures; {early} retries came before half the announced delay")
        return early > 0


def supervisor_dark() -> bool:
    """Under repeated SIGKILLs, the supervisor can leave no worker process at all.

    `pgq work --processes 3` backs off each slot whose child died young, all slots at
    once: for seconds at a time no process runs jobs or rescues them.
    """
    with Lab(FleetOptions(supervised=True)) as lab:
        lab.start_fleet()
        lab.start_producer(backlog=2_000, doomed=0)
        lab.sleep(1)
        dark, longest, current = 0.0, 0.0, 0.0
        deadline = time.monotonic() + 75
        next_kill = time.monotonic()
        while time.monotonic() < deadline:
            if time.monotonic() >= next_kill and lab.worker_pids():
                sigkill_workers(lab, count=1, spacing=0.1)
                next_kill = time.monotonic() + 3
            if not lab.worker_pids():
                dark += 0.1
                current += 0.1
                longest = max(longest, current)
            else:
                current = 0.0
            lab.sleep(0.1)
        print(f"75 s of a SIGKILL every ~3 s: no worker process at all for {dark:.1f}s "
              f"(longest stretch {longest:.1f}s)")  # fmt: skip
        # A restart takes a moment (the supervisor polls every 0.2 s): count only real gaps.
        return longest > 1.0


REPRODUCTIONS: dict[str, Callable[[], bool]] = {
    "deadlock": deadlock,
    "heartbeat-after-outage": heartbeat_after_outage,
    "reconnect-after-outage": reconnect_after_outage,
    "leases-held": leases_held,
    "claim-backoff": claim_backoff,
    "supervisor-dark": supervisor_dark,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(REPRODUCTIONS))
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in REPRODUCTIONS]
    if unknown:
        parser.error(f"unknown reproduction {unknown}; choose from {', '.join(REPRODUCTIONS)}")
    reproduced = 0
    for name in args.names or list(REPRODUCTIONS):
        print(f"== {name}: {(REPRODUCTIONS[name].__doc__ or '').splitlines()[0]}", flush=True)
        hit = REPRODUCTIONS[name]()
        reproduced += hit
        print(f"   {'REPRODUCED' if hit else 'not reproduced this time'}", flush=True)
    return 0 if reproduced == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
