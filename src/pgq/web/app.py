"""``create_app``: the Starlette app that serves the API and the dashboard, and its error pages.

Starlette rather than FastAPI: FastAPI is Starlette plus pydantic models and a
generated schema; pgq checks its input itself (the same checks as enqueue's, so
that the API and Python refuse the same jobs with the same words), and keeps its
OpenAPI document as a written contract. Starlette alone is a small, well-kept
dependency with the routing, templates, static files and test tools needed here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from pgq.config import resolve_schema
from pgq.errors import InvalidJobError, JobNotFoundError, JobStateError, SchemaError
from pgq.web import api, pages
from pgq.web.api_input import FieldError, field_of
from pgq.web.context import Database, Json
from pgq.web.security import Access, Guard, is_api

log = logging.getLogger("pgq.web")

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_CONNECTIONS = 10


def create_app(
    dsn: str,
    *,
    token: str | None,
    schema: str | None = None,
    read_only: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> Starlette:
    """The ASGI app. ``token`` is required as a keyword: None means no auth at all.

    Without a token the app answers only requests addressed to a loopback host
    (see pgq.web.security); mounted in your own app, put it behind your own auth
    or give it a token. The connection should log in as a role granted
    ``<schema>_operator`` (``pgq roles``): it reads jobs and runs the operator
    functions. Example::

        app = create_app("postgresql://pgq_web@db/app", token=os.environ["PGQ_WEB_TOKEN"])
    """
    database = Database(dsn, resolve_schema(schema), max_connections)
    access = Access.build(token, read_only)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        database.close()

    app = Starlette(
        routes=[
            *api.ROUTES,
            *pages.ROUTES,
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(Guard, access=access)],
        exception_handlers={
            HTTPException: _http_error,
            FieldError: api.field_error,
            pages.FormRefused: pages.form_refused,
            InvalidJobError: _invalid,
            JobNotFoundError: _not_found,
            JobStateError: _conflict,
            SchemaError: _unavailable,
            PoolTimeout: _unavailable,
            psycopg.errors.InsufficientPrivilege: _forbidden_by_database,
            psycopg.OperationalError: _unavailable,
        },
        lifespan=lifespan,
    )
    app.state.database = database
    app.state.access = access
    app.state.read_only = read_only
    app.state.auth = token is not None
    return app


def _answer(request: Request, status: int, message: str, field: str | None = None) -> Response:
    if is_api(request.scope):
        return Json({"error": message, "field": field}, status_code=status)
    return pages.error_page(request, status, message)


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (no such route, method not allowed), in the API's JSON too."""
    assert isinstance(error, HTTPException)
    response = _answer(request, error.status_code, error.detail)
    response.headers.update(error.headers or {})
    return response


async def _invalid(request: Request, error: Exception) -> Response:
    return _answer(request, 422, str(error), field_of(str(error)))


async def _not_found(request: Request, error: Exception) -> Response:
    return _answer(request, 404, str(error))


async def _conflict(request: Request, error: Exception) -> Response:
    return _answer(request, 409, str(error))


async def _unavailable(request: Request, error: Exception) -> Response:
    message = request.app.state.database.safe(error)
    log.warning("database unavailable: %s", message)
    return _answer(request, 503, f"the database is unavailable: {message}")


async def _forbidden_by_database(request: Request, error: Exception) -> Response:
    schema = request.app.state.database.schema
    message = (
        f"the database refused ({request.app.state.database.safe(error)}): pgq web's role "
        f"needs {schema}_operator (see `pgq roles`)"
    )
    return _answer(request, 403, message)
