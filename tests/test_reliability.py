"""Fault injection, short form: real `pgq work` processes, a cluster of the test's own, and
faults (SIGKILL, SIGSTOP, PostgreSQL restarts, killed connections, a full connection table).

Each test runs one scenario of tests/reliability/ and fails if a promise broke: a job
lost, stuck, finished twice in the database, never run, or with attempts that do not
match its errors. What the faults cost (re-runs, recovery times) is printed, not
asserted: the machine is shared. The long form is ``bash scripts/reliability.sh``;
docs/reliability.md explains both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.run import describe
from reliability.scenarios import ScenarioResult, run_scenario


def run_short(name: str, log_dir: Path) -> ScenarioResult:
    result = run_scenario(name, long=False, log_dir=log_dir)
    print(describe(result))  # shown by pytest when the test fails
    assert result.problems == [], "\n".join(result.problems)
    assert result.verdict.lost == 0
    assert result.verdict.duplicate_finishes == 0
    return result


@pytest.mark.slow
def test_sigkilled_workers_lose_no_job_and_no_job_finishes_twice(tmp_path: Path) -> None:
    result = run_short("sigkill", tmp_path)
    assert result.verdict.jobs >= 10_000
    assert result.verdict.interrupted_runs > 0, "some kill landed mid-job"
    assert result.verdict.rescued > 0, "the killed workers' jobs came back through rescue"


@pytest.mark.slow
def test_supervisor_restarts_sigkilled_children_and_no_job_is_lost(tmp_path: Path) -> None:
    result = run_short("sigkill-supervised", tmp_path)
    assert result.verdict.interrupted_runs > 0, "some kill landed mid-job"


@pytest.mark.slow
def test_stopped_worker_wakes_up_to_find_its_outcomes_fenced(tmp_path: Path) -> None:
    result = run_short("sigstop", tmp_path)
    verdict = result.verdict
    assert all(fault.rescued > 0 for fault in result.faults), "the fleet rescued its jobs"
    # One dropped outcome per rescued job (checked per worker in the scenario), and the
    # finishes table, not the log, is the proof: no job was finished twice.
    assert verdict.fenced + verdict.lease_lost_discards == verdict.rescued


@pytest.mark.slow
def test_postgres_restarts_fast_immediate_and_down_lose_no_job(tmp_path: Path) -> None:
    result = run_short("restart", tmp_path)
    kinds = [fault.kind for fault in result.faults]
    assert kinds == ["restart-fast", "restart-immediate", "restart-outage"]


@pytest.mark.slow
def test_terminated_worker_connections_lose_no_job(tmp_path: Path) -> None:
    run_short("terminate", tmp_path)


@pytest.mark.slow
def test_full_connection_table_locks_workers_out_and_they_recover(tmp_path: Path) -> None:
    run_short("connection-limit", tmp_path)
