#!/usr/bin/env bash
# Lint, type-check and test pgq: the README's test command, and what CI runs.
# Works on a fresh clone: it creates .venv and installs pgq with its dev extras.
# Arguments go to pytest, e.g. `bash scripts/test.sh -k enqueue -x`.
# The tests need PostgreSQL: $PGQ_TEST_DSN, else 127.0.0.1:5432 (user postgres),
# else a throwaway cluster they start themselves (see tests/conftest.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

# tests/test_docs_site.py parses the docs' diagrams with Mermaid itself (from npm).
if [ ! -d .venv/mermaid/node_modules/mermaid ]; then
    npm install --silent --no-save --no-package-lock --prefix .venv/mermaid mermaid@11 jsdom@26 \
        >/dev/null 2>&1 || echo "warning: npm install mermaid failed; test_docs_site will fail" >&2
fi

echo "== ruff check" >&2
.venv/bin/ruff check .
echo "== ruff format --check" >&2
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy
if [ "$#" -eq 0 ]; then
    # The benchmark's smoke run (pgq and the raw-SQL ceiling, a few hundred jobs), so
    # that benchmarks/ cannot rot; the full comparison is `python3 benchmarks/run.py`.
    echo "== benchmark smoke" >&2
    .venv/bin/python benchmarks/run.py --smoke --no-docs --results "$(mktemp)"
fi
echo "== pytest" >&2
if [ "$#" -eq 0 ]; then
    # The whole suite in two processes (pytest-xdist): most tests wait on PostgreSQL or on
    # worker processes, so two halves finish in about 60 % of the time on two cores. Each
    # process has its own template database; every test still gets a fresh database.
    exec .venv/bin/python -m pytest -n "${PGQ_TEST_PROCESSES:-2}"
fi
exec .venv/bin/python -m pytest "$@"
