#!/usr/bin/env bash
# Install pgq in .venv and run the demo: migrate, enqueue a shop's jobs, run a
# worker until they are done, print what happened. Database: $PGQ_DSN, else a
# local PostgreSQL on 127.0.0.1:5432, else an embedded one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[embedded]'
exec .venv/bin/pgq demo "$@"
