"""Where a drain's time goes: CPU of the server and of the workers, WAL, and what backends wait on.

A scaling figure needs its reason. Sampled while a drain runs, from the outside:

- CPU seconds of every PostgreSQL process and of the worker processes (and their
  children, for a supervisor), read from ``/proc/<pid>/stat``, as cores used;
- WAL written (``pg_current_wal_lsn``), as MB/s;
- ``pg_stat_activity`` every 100 ms: the share of the benchmark database's active
  backends waiting on a heavyweight lock (``Lock``), on an internal lock
  (``LWLock``: WAL insertion, buffer mapping), or on I/O, and the wait most seen.

Standard library and psycopg only, like bench_common.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

SAMPLE_SECONDS = 0.1
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(command, parent pid, CPU seconds) of a live process, its reaped children's included.

    The children's share keeps a sum over processes from shrinking when one exits:
    a backend that disconnects during a drain is counted in the postmaster's.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    command = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # After the command: state, ppid, ... utime, stime, cutime, cstime (fields 14 to 17).
    return command, int(fields[1]), sum(int(field) for field in fields[11:15]) / TICKS


def _processes() -> dict[int, tuple[str, int, float]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            found[int(entry)] = stat
    return found


def server_cpu_seconds() -> float:
    """CPU seconds used so far by every PostgreSQL process on this machine."""
    return sum(cpu for command, _, cpu in _processes().values() if command.startswith("postgres"))


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds used so far by ``roots`` and every live descendant."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, list(roots)
    while todo:
        pid = todo.pop()
        if pid in processes:
            total += processes[pid][2]
        todo.extend(children.get(pid, []))
    return total


class ResourceSampler:
    """Samples a drain from ``start()`` to ``stop(workers)``; ``stop`` returns the figures."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.waits: Counter[str] = Counter()
        self.samples = 0  # active backends seen, summed over samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self.server_cpu = server_cpu_seconds()
        self.wal_lsn = self._lsn()
        self._thread.start()

    def _lsn(self) -> str:
        row = self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def _sample(self) -> None:
        with psycopg.connect(self.conn.info.dsn, autocommit=True) as conn:
            while not self._stop.wait(SAMPLE_SECONDS):
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') "
                    "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                ).fetchall()
                self.samples += len(rows)
                self.waits.update(row[0] for row in rows)

    def stop(self, seconds: float, worker_pids: list[int]) -> dict[str, Any]:
        """Figures over the drain's ``seconds``, the workers still alive."""
        worker_cpu = tree_cpu_seconds(worker_pids)
        server_cpu = server_cpu_seconds() - self.server_cpu
        self._stop.set()
        self._thread.join()
        row = self.conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", [self.wal_lsn]
        ).fetchone()
        self.conn.close()
        wal_bytes = float(row[0]) if row else 0.0
        share = {
            kind: sum(n for wait, n in self.waits.items() if wait.startswith(kind + ":"))
            / max(1, self.samples)
            for kind in ("Lock", "LWLock", "IO")
        }
        top = [wait for wait, _ in self.waits.most_common() if wait != "CPU"][:2]
        return {
            "server_cpu_cores": server_cpu / seconds,
            "worker_cpu_cores": worker_cpu / seconds,
            "wal_mb_per_s": wal_bytes / seconds / 1e6,
            "lock_wait_share": share["Lock"],
            "lwlock_wait_share": share["LWLock"],
            "io_wait_share": share["IO"],
            "top_waits": ", ".join(top) or "none",
        }
