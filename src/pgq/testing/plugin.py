"""pytest fixtures for pgq, loaded by pytest wherever pgq is installed (entry point pytest11).

- ``pgq_dsn`` (session): the database of ``$PGQ_TEST_DSN``, else ``$PGQ_DSN`` or
  ``$DATABASE_URL``, with pgq migrated into a schema of this session's own, dropped
  at the end; the DSN comes back.
- ``pgq_conn`` (each test): a psycopg connection to it, in a transaction rolled
  back when the test ends, so nothing a test enqueues or drains leaks into the
  next one. ``$PGQ_SCHEMA`` names the session's schema during the test, so code
  that enqueues with pgq's defaults finds it.

Fixtures that are not requested cost nothing; the module imports pgq lazily.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgq.queries import query

TEST_DSN_ENV_VAR = "PGQ_TEST_DSN"


@pytest.fixture(scope="session")
def pgq_test_schema() -> str:
    """The schema this session's pgq lives in (``pgq_test_`` and a random suffix)."""
    return f"pgq_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pgq_dsn(pgq_test_schema: str) -> Iterator[str]:
    from pgq.config import resolve_dsn
    from pgq.errors import ConfigError
    from pgq.migrate import migrate

    try:
        dsn = resolve_dsn(os.environ.get(TEST_DSN_ENV_VAR))
    except ConfigError as error:
        pytest.fail(f"pgq_dsn: set ${TEST_DSN_ENV_VAR} (or $PGQ_DSN) to a test database: {error}")
    migrate(dsn, schema=pgq_test_schema)
    yield dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query("drop_test_schema", pgq_test_schema))


@pytest.fixture
def pgq_conn(
    pgq_dsn: str, pgq_test_schema: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[psycopg.Connection[Any]]:
    monkeypatch.setenv("PGQ_SCHEMA", pgq_test_schema)
    with psycopg.connect(pgq_dsn) as conn:
        try:
            yield conn
        finally:
            conn.rollback()
