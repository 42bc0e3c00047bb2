"""A real PgBouncer for tests, in front of the test server, started on a free port.

Each instance writes its own ini and auth file into a fresh temp dir and runs
``pgbouncer`` in the foreground as a child process, stopped at ``stop()``.
PgBouncer refuses to run as root, so as root it runs with ``-u postgres``. The
ini is what a transaction-pooling deployment looks like, made small enough that
the pooling shows:

- ``pool_mode = transaction``: a server connection is lent to a client for one
  transaction at a time (``pool_mode="session"`` for the other mode);
- ``default_pool_size = 3`` server connections per database and user, so that
  clients share them;
- ``server_round_robin = 1``: idle server connections are lent in turn rather
  than the most recently used first (PgBouncer's default), so that a client's
  consecutive transactions really land on different server connections once the
  pool is warm (``warm_up``). Anything that relies on session state shows up at
  once, instead of only under load.

``auth_type = trust``: PgBouncer 1.18 still looks the user up in the auth file
(an unknown user gets '"trust" authentication failed'), so the file lists the
upstream DSN's user. A password in the upstream DSN goes into the ``[databases]``
entry, for the server side. Every database name maps to the same name upstream
(``* = ...``), so each test's fresh database works with no change to the ini.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgcluster import free_port

PoolMode = Literal["transaction", "session"]

INSTALL_HINT = (
    "PgBouncer is not installed, and the PgBouncer tests need a real one: "
    "`apt-get install -y pgbouncer` (Debian/Ubuntu; .ci/run does this), or put a "
    "`pgbouncer` binary on PATH"
)
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


class PgBouncerError(RuntimeError):
    """PgBouncer is missing, or did not start."""


def find_pgbouncer() -> Path | None:
    """The pgbouncer binary: on PATH, else where Debian puts it (/usr/sbin is not on every PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/pgbouncer"), Path("/usr/local/sbin/pgbouncer")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _ini_value(value: str) -> str:
    """A value for a ``[databases]`` connection string (single-quoted when it needs it)."""
    if value and all(ch.isalnum() or ch in "._-/:" for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgBouncer:
    """A PgBouncer in front of the server of ``upstream_dsn``, on 127.0.0.1 and a free port.

    Example::

        bouncer = PgBouncer(admin_dsn)
        bouncer.start()
        conn = psycopg.connect(bouncer.dsn(test_dsn), prepare_threshold=None)
        ...
        bouncer.stop()
    """

    def __init__(
        self,
        upstream_dsn: str,
        *,
        pool_mode: PoolMode = "transaction",
        pool_size: int = 3,
        max_client_conn: int = 200,
    ) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise PgBouncerError(INSTALL_HINT)
        self.binary = binary
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        upstream = conninfo_to_dict(upstream_dsn)
        self.user = str(upstream.get("user") or pwd.getpwuid(os.geteuid()).pw_name)
        self._upstream = upstream
        self.port = free_port()
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgq-test-pgbouncer-"))
        self.ini_path = self.base_dir / "pgbouncer.ini"
        self.log_path = self.base_dir / "pgbouncer.log"
        self._run_as = "postgres" if os.geteuid() == 0 else None
        if self._run_as is not None:
            try:
                pwd.getpwnam(self._run_as)
            except KeyError:
                raise PgBouncerError(
                    "pgbouncer refuses to run as root, and there is no `postgres` user to run "
                    "it as: run the tests as another user, or create that user"
                ) from None
        self._process: subprocess.Popen[bytes] | None = None

    def _database_entry(self) -> str:
        keys = ("host", "port", "password")
        parts = [f"{key}={_ini_value(str(self._upstream[key]))}" for key in keys
                 if self._upstream.get(key)]  # fmt: skip
        return " ".join(parts)

    def _write_config(self) -> None:
        auth_file = self.base_dir / "users.txt"
        auth_file.write_text(f'"{self.user}" ""\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",  # TCP only: no socket file in /tmp
            "auth_type": "trust",
            "auth_file": str(auth_file),
            "admin_users": self.user,  # SHOW SERVERS etc. on the `pgbouncer` database
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.pool_size),
            "max_client_conn": str(self.max_client_conn),
            "server_round_robin": "1",
            "logfile": str(self.log_path),
            "log_connections": "0",
            "log_disconnections": "0",
        }
        lines = ["[databases]", f"* = {self._database_entry()}", "", "[pgbouncer]"]
        lines += [f"{name} = {value}" for name, value in settings.items()]
        self.ini_path.write_text("\n".join(lines) + "\n")
        if self._run_as is not None:
            owner = pwd.getpwnam(self._run_as)
            for path in (self.base_dir, self.ini_path, auth_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def start(self) -> None:
        """Start PgBouncer and wait until it accepts connections."""
        self._write_config()
        argv = [str(self.binary)]
        if self._run_as is not None:
            argv += ["-u", self._run_as]
        argv.append(str(self.ini_path))
        # What it says before its log file is open (a bad ini) goes to stderr.
        with (self.base_dir / "stderr.log").open("wb") as stderr:
            self._process = subprocess.Popen(
                argv, cwd=self.base_dir, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._accepts():
            if self._process.poll() is not None:
                raise PgBouncerError(
                    f"pgbouncer exited with code {self._process.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise PgBouncerError(
                    f"pgbouncer did not listen within {START_TIMEOUT_SECONDS:g}s:\n{self.log()}"
                )
            time.sleep(0.02)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (PgBouncer's immediate shutdown), then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log(self) -> str:
        """PgBouncer's log file, after anything it wrote to stderr."""
        texts = []
        for path in (self.base_dir / "stderr.log", self.log_path):
            try:
                texts.append(path.read_text(errors="replace"))
            except OSError:
                pass
        return "".join(texts) or "(no log)"

    def dsn(self, direct_dsn: str) -> str:
        """``direct_dsn`` (a database on the upstream server) reached through this PgBouncer."""
        params: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "user": self.user}
        return make_conninfo(direct_dsn, **params)

    @contextmanager
    def admin(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A connection to PgBouncer's admin console (``SHOW POOLS``, ``SHOW SERVERS``)."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="pgbouncer",
            autocommit=True, prepare_threshold=None,
        ) as conn:  # fmt: skip
            # The console speaks only the simple query protocol.
            conn.cursor_factory = psycopg.ClientCursor
            yield conn

    def server_connections(self, dbname: str) -> int:
        """How many server connections PgBouncer holds open to ``dbname``."""
        with self.admin() as conn:
            cursor = conn.execute("SHOW SERVERS")
            names = [column.name for column in cursor.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return sum(row["database"] == dbname for row in rows)

    def warm_up(self, direct_dsn: str) -> None:
        """Open ``pool_size`` server connections to ``direct_dsn``'s database.

        With ``server_round_robin`` and a full pool, each new transaction goes to
        the next server connection in turn. Without warming, a lone client would
        keep reusing the one connection its first transaction opened.
        """
        dsn = self.dsn(direct_dsn)
        clients = [psycopg.connect(dsn, prepare_threshold=None) for _ in range(self.pool_size)]
        try:
            for client in clients:  # each holds its server connection until it commits
                client.execute("SELECT 1")
            for client in clients:
                client.commit()
        finally:
            for client in clients:
                client.close()
