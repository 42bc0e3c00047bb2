"""``manage.py pgq_work``: ``pgq work`` for this project's Django tasks.

Every option is ``pgq work``'s (this command hands them over), plus ``--backend``,
the task backend to serve. The worker's APP is ``pgq.contrib.django.worker_app:app``;
the database is the backend's (``$PGQ_DSN`` for the worker, so that the password
never shows in a process list), unless ``--dsn`` names another.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from pgq.contrib.django import database
from pgq.contrib.django.worker_app import (
    APP_PATH,
    BACKEND_ENV_VAR,
    DEFAULT_BACKEND,
    pgq_backend,
)
from pgq.errors import ConfigError

USAGE = (
    "Usage: manage.py pgq_work [--backend ALIAS] [pgq work's options]\n\n"
    "  Run a pgq worker for this project's Django tasks of task backend ALIAS\n"
    f"  (default: {DEFAULT_BACKEND!r}). The options are `pgq work`'s, below; its APP is\n"
    "  filled in, and the database and schema are the backend's.\n"
)
# Django's own options, which manage.py has applied before this command runs.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


class Command(BaseCommand):
    help = "Run a pgq worker for this project's Django tasks (pgq work's options, --backend)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default=DEFAULT_BACKEND, help="The task backend.")
        parser.add_argument("pgq_args", nargs="*", help="pgq work's options.")

    def run_from_argv(self, argv: list[str]) -> None:
        # pgq work parses its own options: Django's parser would refuse them.
        alias, pgq_args = _split(argv[2:])
        try:
            if any(arg in ("--help", "-h") for arg in pgq_args):
                self.stdout.write(USAGE)
            else:
                self.check()
            run_worker(alias, pgq_args, prog_name=f"{Path(argv[0]).name} pgq_work")
        except CommandError as error:  # one line, as Django's own run_from_argv prints it
            self.stderr.write(f"{type(error).__name__}: {error}")
            sys.exit(error.returncode)

    def handle(self, *args: Any, **options: Any) -> None:
        """``call_command("pgq_work", backend="default", pgq_args=["-c", "20"])``."""
        run_worker(options["backend"], list(options["pgq_args"]), prog_name="pgq_work")


def _split(argv: list[str]) -> tuple[str, list[str]]:
    """``--backend`` for this command, Django's options dropped, the rest for pgq work."""
    alias, rest = DEFAULT_BACKEND, []
    arguments = iter(argv)
    for arg in arguments:
        name, equals, value = arg.partition("=")
        if name == "--backend" or name in _DJANGO_OPTIONS:
            if not equals:
                value = next(arguments, "")
            if name == "--backend":
                alias = value
        else:
            rest.append(arg)
    return alias, rest


def run_worker(alias: str, pgq_args: list[str], *, prog_name: str) -> None:
    """Run ``pgq work`` for the task backend ``alias``; returns only for --help."""
    from typer.main import get_command

    from pgq.cli import app as pgq_cli

    try:
        backend = pgq_backend(alias)
        if not _given(pgq_args, "--dsn"):
            os.environ["PGQ_DSN"] = database.dsn(backend.database)
    except ConfigError as error:
        raise CommandError(str(error)) from None
    if not _given(pgq_args, "--schema"):
        pgq_args = [*pgq_args, "--schema", backend.schema]
    # What `--processes N` children inherit: they set Django up themselves.
    os.environ[BACKEND_ENV_VAR] = alias
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [_project_root(), os.environ.get("PYTHONPATH")])
    )
    work = get_command(pgq_cli).commands["work"]  # type: ignore[attr-defined]
    try:
        work.main([APP_PATH, *pgq_args], prog_name=prog_name)
    except SystemExit as done:
        if done.code not in (0, None):
            raise
        sys.stdout.flush()


def _given(args: list[str], option: str) -> bool:
    return any(arg == option or arg.startswith(f"{option}=") for arg in args)


def _project_root() -> str | None:
    """Where the settings module is imported from: `python -m pgq` children need it too."""
    if not settings.SETTINGS_MODULE:  # settings.configure(): children cannot set Django up
        return None
    top = importlib.import_module(settings.SETTINGS_MODULE.partition(".")[0])
    places = [top.__file__] if top.__file__ else list(top.__path__)
    path = Path(places[0])
    return str(path.parent.parent if path.name == "__init__.py" else path.parent)
