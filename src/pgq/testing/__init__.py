"""Test helpers for applications that use pgq: assert what a test enqueued, and run it.

Everything works on the test's own connection, inside its transaction: a test
that rolls back at its end leaves nothing behind, and sees jobs it enqueued
without committing them.

Example::

    def test_signup_sends_a_welcome_email(pgq_conn):
        signup(pgq_conn, "ada@example.com")
        pgq.testing.assert_enqueued(pgq_conn, "send_welcome", args={"to": "ada@example.com"})
        assert pgq.testing.drain(pgq_conn, app)["succeeded"] == 1

The pytest plugin (``pgq.testing.plugin``, loaded by pytest when pgq is
installed) provides the ``pgq_dsn`` and ``pgq_conn`` fixtures.
"""

from pgq.testing.assertions import assert_enqueued, enqueued_jobs, refute_enqueued
from pgq.testing.drain import drain

__all__ = ["assert_enqueued", "drain", "enqueued_jobs", "refute_enqueued"]
