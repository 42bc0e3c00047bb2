"""A throwaway PostgreSQL cluster for tests: initdb'd into a fresh temp dir, on its own port.

The suite uses one when no other server can be reached, and tests that must
restart or kill PostgreSQL use one of their own (never the shared server).

initdb and pg_ctl refuse to run as root, so when the tests run as root every
server command runs as the ``postgres`` OS user, in a temp dir chowned to it.
Flushing to disk is switched off (no fsync, no full-page writes): a killed
server still keeps every commit (the OS holds the writes), only a machine crash
would lose them, and it makes initdb + start take well under a second.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psycopg.conninfo

StopMode = Literal["smart", "fast", "immediate"]

# Written into postgresql.conf, so every start and restart uses them.
# synchronous_commit stays on: with fsync off it costs nothing measurable, and
# off it loses the last few hundred milliseconds of commits at an `immediate`
# stop, which would make a simulated crash lose data a real one keeps.
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


class ClusterError(RuntimeError):
    """The throwaway cluster could not be created, started or stopped."""


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: the newest /usr/lib/postgresql/*/bin, else PATH."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (``pgq work --processes N`` takes
    ``--metrics-port`` + 0 .. N-1): a free port's neighbour is often taken."""
    while True:
        first = free_port()
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()


class ThrowawayCluster:
    """A private PostgreSQL cluster that lives in a temp dir until ``cleanup()``.

    The port stays the same across ``restart()``, so clients that reconnect find
    the server again. Example::

        with ThrowawayCluster() as cluster:
            cluster.start()
            psycopg.connect(cluster.dsn())
            cluster.restart(mode="immediate")  # a crash, as a worker would see it
    """

    def __init__(self, *, bindir: Path | None = None, port: int | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise ClusterError(
                "no PostgreSQL server binaries found (initdb, pg_ctl): install the "
                "PostgreSQL server package, e.g. `apt-get install postgresql`"
            )
        self.bindir = found
        self.port = port or free_port()
        self.running = False
        self._run_as = "postgres" if os.geteuid() == 0 else None
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgq-test-cluster-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "postgresql.log"
        self._initialised = False
        self.socket_dir.mkdir()
        if self._run_as is not None:
            owner = pwd.getpwnam(self._run_as)
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def __enter__(self) -> ThrowawayCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq DSN for ``dbname`` on this cluster, over TCP."""
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname
        )

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs.update(user=self._run_as, group=self._run_as, extra_groups=[])
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.base_dir,  # the postgres user may not be able to enter our cwd
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"{args[0]} failed with exit code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{self.log_tail()}"
            )
        return result

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(text.splitlines()[-lines:])

    def _initdb(self) -> None:
        self._run("initdb", "--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale", "C", "-D", str(self.data_dir))  # fmt: skip
        settings = {
            **_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# pgq test settings\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self._initialised = True

    def start(self) -> None:
        """initdb on first use, then start the server and wait until it accepts connections."""
        if self.running:
            return
        if not self._initialised:
            self._initdb()
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                  "start")  # fmt: skip
        self.running = True

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: ``fast`` rolls back open transactions, ``immediate`` is a crash."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop (``immediate`` simulates a crash) and start again on the same port."""
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop the server at once if it runs, and remove every file of the cluster."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
