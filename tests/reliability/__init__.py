"""Fault injection against real `pgq work` processes and a PostgreSQL cluster the suite owns.

The short form runs in the normal test suite (tests/test_reliability.py); the long
form is ``bash scripts/reliability.sh``. See docs/reliability.md for what is
injected, what is checked and the latest figures.

Modules: ``app`` (the handlers the workers run), ``lab`` (the cluster, the
database and the worker fleet), ``producer`` (the backlog of jobs), ``faults`` (how each fault is
injected), ``checks`` (the verdict over the ledger and the finishes table),
``scenarios`` (the fault runs, short and long), ``run`` (the command line) and
``repro`` (reproductions of the weaknesses the runs found).
"""

import sys
from pathlib import Path

# The suite's helpers (pgcluster, worker_helpers) are top-level modules of tests/,
# as conftest.py imports them. pytest puts tests/ on sys.path; `python -m
# tests.reliability.run` does not, so do it here.
_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
