"""How each fault is injected. Each function injects ``count`` faults into a running lab,
spaced by about ``spacing`` seconds (jittered), and returns what it did.
"""

from __future__ import annotations

import time

import psycopg

from .lab import FILLER_ROLE, Fault, Lab, stopped


def _pause(lab: Lab, spacing: float) -> None:
    lab.sleep(lab.random.uniform(0.5 * spacing, 1.5 * spacing))


def _busiest_slot(lab: Lab) -> tuple[int, int] | None:
    """(slot, running jobs) of a worker in the middle of jobs, picked at random; None if idle."""
    running = lab.running_by_pid()
    busy = [(slot, running[w.pid]) for slot, w in enumerate(lab.slots) if running.get(w.pid)]
    return lab.random.choice(busy) if busy else None


def _pick_busy_slot(lab: Lab, *, timeout: float = 10) -> tuple[int, int]:
    """Wait until some worker holds running jobs, so that the fault lands mid-job."""
    deadline = time.monotonic() + timeout
    while (choice := _busiest_slot(lab)) is None and time.monotonic() < deadline:
        lab.sleep(0.05)
    return choice or (lab.random.randrange(len(lab.slots)), 0)


def sigkill_workers(lab: Lab, count: int, spacing: float) -> list[Fault]:
    """SIGKILL a busy worker process; its replacement starts at once (as a supervisor would)."""
    faults = []
    for _ in range(count):
        _pause(lab, spacing)
        slot, held = _pick_busy_slot(lab)
        at = time.time()
        victim = lab.kill_worker(slot)
        faults.append(Fault("sigkill", at, time.time(), [victim.pid], f"held {held} running jobs"))
    return faults


def sigstop_workers(lab: Lab, count: int, spacing: float, stop_seconds: float) -> list[Fault]:
    """SIGSTOP a busy worker for longer than its lease (the fleet rescues its jobs), then SIGCONT.

    The stopped process then wakes up still "running" jobs that finished elsewhere
    meanwhile: the fence must refuse its outcomes.
    """
    faults = []
    for _ in range(count):
        _pause(lab, spacing)
        slot, held = _pick_busy_slot(lab)
        victim = lab.slots[slot]
        at = time.time()
        with stopped(victim):
            lab.sleep(stop_seconds)
        detail = f"held {held} running jobs; stopped {stop_seconds:g}s"
        faults.append(Fault("sigstop", at, time.time(), [victim.pid], detail))
    return faults


def restart_postgres(
    lab: Lab, modes: list[str], spacing: float, outage_seconds: float
) -> list[Fault]:
    """Restart the server mid-run, in one of three ways.

    ``fast``: a clean restart (open transactions rolled back, clients disconnected);
    ``immediate``: a crash and crash recovery; ``outage``: a crash, then the server
    stays down for ``outage_seconds`` (longer than the lease) before it starts again.
    """
    faults = []
    for mode in modes:
        _pause(lab, spacing)
        pids = [w.pid for w in lab.slots]
        at = time.time()
        if mode == "outage":
            lab.cluster.stop("immediate")
            lab.sleep(outage_seconds)
            lab.cluster.start()
            detail = f"pg_ctl stop -m immediate, down {outage_seconds:g}s, start"
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
        pids = [w.pid for w in lab.slots]
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
        pids = [w.pid for w in lab.slots]
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
