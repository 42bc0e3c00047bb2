"""How each fault is injected. Each function injects ``count`` faults into a running lab,
spaced by about ``spacing`` seconds (jittered), and returns what it did.
"""

from __future__ import annotations

import time

import psycopg

from .lab import FILLER_ROLE, Fault, Lab, stopped

OUTAGE_FACTORS = (1.0, 0.6, 1.6)


def _pause(lab: Lab, spacing: float) -> None:
    lab.sleep(lab.random.uniform(0.5 * spacing, 1.5 * spacing))


def _busy_worker(lab: Lab) -> tuple[int, int] | None:
    """(pid, running jobs) of a worker in the middle of jobs, picked at random; None if idle."""
    running = lab.running_by_pid()
    busy = [(pid, running[pid]) for pid in lab.worker_pids() if running.get(pid)]
    return lab.random.choice(busy) if busy else None


def _pick_busy_worker(lab: Lab, *, timeout: float = 10) -> tuple[int, int]:
    """Wait until some worker holds running jobs, so that the fault lands mid-job.

    After ``timeout`` any live worker will do; with none alive (a supervisor that is
    backing off every slot) wait for one.
    """
    deadline = time.monotonic() + timeout
    while (choice := _busy_worker(lab)) is None and time.monotonic() < deadline:
        lab.sleep(0.05)
    if choice is not None:
        return choice
    lab.wait(lambda: bool(lab.worker_pids()), 120, "a live worker process")
    return lab.random.choice(lab.worker_pids()), 0


def sigkill_workers(lab: Lab, count: int, spacing: float) -> list[Fault]:
    """SIGKILL a busy worker process; a replacement starts (at once, or as the supervisor says)."""
    faults = []
    for _ in range(count):
        _pause(lab, spacing)
        pid, held = _pick_busy_worker(lab)
        at = time.time()
        lab.kill_worker(pid)
        faults.append(Fault("sigkill", at, time.time(), [pid], f"held {held} running jobs"))
    return faults


def sigstop_workers(lab: Lab, count: int, spacing: float, stop_seconds: float) -> list[Fault]:
    """SIGSTOP a busy worker for longer than its lease (the fleet rescues its jobs), then SIGCONT.

    The stopped process then wakes up still "running" jobs that finished elsewhere
    meanwhile: the fence must refuse its outcomes.
    """
    faults = []
    for _ in range(count):
        _pause(lab, spacing)
        pid, held = _pick_busy_worker(lab)
        at = time.time()
        with stopped(pid):
            lab.sleep(stop_seconds)
        detail = f"held {held} running jobs; stopped {stop_seconds:g}s"
        faults.append(Fault("sigstop", at, time.time(), [pid], detail))
    return faults


def restart_postgres(
    lab: Lab, modes: list[str], spacing: float, outage_seconds: float
) -> list[Fault]:
    """Restart the server mid-run, in one of three ways.

    ``fast``: a clean restart (open transactions rolled back, clients disconnected);
    ``immediate``: a crash and crash recovery; ``outage``: a crash, then the server
    stays down (longer than the lease) before it starts again: ``outage_seconds``,
    then 0.6 and 1.6 times that in turn, since what a worker's backoff costs after an
    outage depends on its length.
    """
    faults = []
    outages = 0
    for mode in modes:
        _pause(lab, spacing)
        pids = lab.worker_pids()
        at = time.time()
        if mode == "outage":
            down = outage_seconds * OUTAGE_FACTORS[outages % len(OUTAGE_FACTORS)]
            outages += 1
            lab.cluster.stop("immediate")
            lab.sleep(down)
            lab.cluster.start()
            detail = f"pg_ctl stop -m immediate, down {down:g}s, start"
        else:
            lab.cluster.restart("immediate" if mode == "immediate" else "fast")
            detail = f"pg_ctl restart -m {mode}"
        faults.append(Fault(f"restart-{mode}", at, time.time(), pids, detail))
    return faults


def terminate_backends(lab: Lab, count: int, spacing: float) -> list[Fault]:
    """pg_terminate_backend every backend of the workers' role at once."""
    faults = []
    for _ in range(count):
        _pause(lab, spacing)
        pids = lab.worker_pids()
        at = time.time()
        ended = lab.terminate_workers()
        faults.append(Fault("terminate", at, time.time(), pids, f"{ended} backends ended"))
    return faults


def _is_full(error: psycopg.OperationalError) -> bool:
    text = str(error)
    return "remaining connection slots are reserved" in text or "too many clients" in text


def _grab_free_slots(lab: Lab, fillers: list[psycopg.Connection[tuple[object, ...]]]) -> int:
    """Open idle connections (as a non-superuser) until the server refuses; how many opened."""
    opened = 0
    while True:
        try:
            conn = psycopg.connect(lab.filler_dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as error:
            if _is_full(error):
                return opened
            raise
        fillers.append(conn)
        opened += 1


def fill_connection_slots(lab: Lab, count: int, spacing: float, hold_seconds: float) -> list[Fault]:
    """Fill every connection slot but the superusers' with idle connections, and hold them.

    Filling alone does not hurt workers that are connected already, so the workers'
    backends are then ended (pg_terminate_backend): for ``hold_seconds`` every
    reconnect is refused. A worker that wins a freed slot in the race is ended again
    and its slot taken. Then every idle connection is closed at once.
    """
    faults = []
    for _ in range(count):
        _pause(lab, spacing)
        fillers: list[psycopg.Connection[tuple[object, ...]]] = []
        pids = lab.worker_pids()
        try:
            _grab_free_slots(lab, fillers)
            at = time.time()
            ended = lab.terminate_workers()
            slipped = 0
            hold_until = time.monotonic() + hold_seconds
            while time.monotonic() < hold_until:
                _grab_free_slots(lab, fillers)
                slipped += lab.terminate_workers()
                lab.sleep(0.02)
            _grab_free_slots(lab, fillers)
        finally:
            end = time.time()
            for conn in fillers:
                conn.close()
        detail = (
            f"{len(fillers)} idle {FILLER_ROLE} connections for {hold_seconds:g}s; "
            f"{ended} worker backends ended, {slipped} more that slipped in"
        )
        faults.append(Fault("connection-limit", at, end, pids, detail))
    return faults
