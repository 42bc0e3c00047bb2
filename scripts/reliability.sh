#!/usr/bin/env bash
# The long form of the fault-injection suite (tests/reliability/): about 10 minutes.
# Each scenario starts a throwaway PostgreSQL cluster of its own (initdb/pg_ctl, run as
# the `postgres` OS user when run as root) and three `pgq work` processes, injects its
# faults (SIGKILL, SIGSTOP, PostgreSQL restarts, pg_terminate_backend, a full connection
# table), and checks that no job was lost or finished twice.
# Prints a report and a Markdown table, writes the figures to tests/reliability/last_run.json,
# and exits 1 if a promise was broken. Arguments go to the runner, e.g. `--only sigkill`.
# The short form runs in the normal test suite: pytest tests/test_reliability.py
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec .venv/bin/python -m tests.reliability.run --long "$@"
