"""`pgq web`: serve pgq.web's API and dashboard with uvicorn (the extra pgq-jobs[web])."""

from __future__ import annotations

from typing import Annotated

import typer

from pgq.cli_shared import Commands, DsnOption, SchemaOption, database, fail
from pgq.config import describe_dsn, resolve_dsn
from pgq.logs import LOG_LEVELS

TOKEN_ENV_VAR = "PGQ_WEB_TOKEN"

web_commands = Commands()


@web_commands.command()
def web(
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Address to listen on; others need --token.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="Port to listen on.")
    ] = 8080,
    token: Annotated[
        str | None,
        typer.Option(
            metavar="TOKEN",
            envvar=TOKEN_ENV_VAR,
            show_envvar=False,
            show_default=False,
            help="Bearer token for the API and the dashboard's login. Default: "
            "$PGQ_WEB_TOKEN (prefer it: a command line is visible to other users).",
        ),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Serve reads only: no enqueue, no changes.")
    ] = False,
    log_level: Annotated[
        str, typer.Option(metavar="LEVEL", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Serve the JSON API and the dashboard over HTTP.

    Needs pip install 'pgq-jobs[web]'. Without a token it listens on a loopback
    address only. Connect as a role granted <schema>_operator (see `pgq roles`).
    """
    from pgq.web.security import is_loopback

    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    if token is not None and not token.strip():
        fail(f"the token is empty: set --token or ${TOKEN_ENV_VAR} to a long random string")
    if token is None and not is_loopback(host):
        fail(
            f"refusing to serve {host} without a token: anyone who reaches it could change "
            f"jobs. Set ${TOKEN_ENV_VAR} (or --token), or listen on 127.0.0.1"
        )
    try:
        import uvicorn

        from pgq.web import create_app
    except ImportError as error:
        fail(f"pgq web needs its extra: pip install 'pgq-jobs[web]' ({error.name} is missing)")
    with database(dsn, schema) as (_, schema_name):  # fail now on a bad DSN or schema
        pass
    target = resolve_dsn(dsn)
    app = create_app(target, token=token, schema=schema_name, read_only=read_only)
    typer.echo(
        f"pgq web on http://{host}:{port}/ for {describe_dsn(target)}"
        f"{' (read-only)' if read_only else ''}{'' if token else ' (no auth: loopback only)'}",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(),
                server_header=False, proxy_headers=False)  # fmt: skip
