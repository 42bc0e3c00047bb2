"""Every code block in the README, the quickstart and the how-to pages runs, as a reader would.

Each page runs in a fresh project directory, with ``PGQ_DSN`` naming a fresh database, its
blocks in the order they appear:

- a ``python`` block whose first line is ``# some/file.py`` is written to that file;
- any other ``python`` block runs in the project directory, after the page's PRELUDE (what the
  page takes as given, e.g. ``app = pgq.App()``; a reader has it from the pages before);
- a ``sh`` block runs in bash with ``set -e``. ``export PGQ_DSN=...`` names the reader's own
  database: the test's database wins;
- a ``sql`` block runs on one connection to the database;
- ``<!-- docs-test: worker -->`` before a ``sh`` block: each command is a worker, which runs until
  no job is left queued or running, then gets SIGTERM and must exit 0;
- ``<!-- docs-test: skip -->``: not run; SKIPPED lists every such block with the reason, so a
  new skip fails this test until somebody has said why;
- ``text`` and ``ini`` blocks are output, formulas and configuration, not code. Every block must
  name its language, so that nothing escapes by accident.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from seeding import seed_job

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/quickstart.md",
    *sorted(p.relative_to(REPO_ROOT).as_posix() for p in REPO_ROOT.glob("docs/howto/*.md")),
]

FENCE = re.compile(
    r"(?:^<!-- docs-test: (?P<directive>[^>]*?) -->\n)?^```(?P<lang>\S*)\n(?P<body>.*?)^```\n",
    re.MULTILINE | re.DOTALL,
)
FILE_HEADER = re.compile(r"\A# (?P<path>[\w./-]+\.py)\n")
NOT_CODE = {"text", "ini"}
RUNNABLE = {"python", "sh", "sql"}

# (page, the block's first line) -> why it is not run here; each is run or checked elsewhere.
SKIPPED = {
    ("README.md", "bash scripts/demo.sh"): "installs pgq: tests/test_demo.py runs the demo",
    ("README.md", "bash scripts/test.sh"): "this suite itself",
    ("README.md", "python3 -m venv .venv"): "serves until stopped: test_docs_site builds the site",
    ("docs/quickstart.md", "cd pgq"): "the install: the suite itself runs inside it",
    ("docs/howto/deployment.md", "docker compose up"): "no Docker engine: tests/test_compose.py",
    ("docs/howto/opentelemetry.md", 'pip install "pgq-jobs[otel]"'): (
        "installs from PyPI: the suite's venv has the extra and the SDK (dev includes them)"
    ),
    ("docs/howto/sqlalchemy.md", 'pip install "pgq-jobs[sqlalchemy]"'): (
        "installs from PyPI: the suite's venv has the extra (dev includes it)"
    ),
    ("docs/howto/django.md", "pip install 'pgq-jobs[django]'"): (
        "installs pgq: the suite runs inside its install, whose dev extra has django"
    ),
    ("docs/howto/django.md", "python manage.py pgq_work --processes 4"): (
        "serves until stopped: tests/test_django.py runs pgq_work --processes 2"
    ),
    ("docs/howto/pgbouncer.md", "PGQ_DSN='postgresql://app@pgbouncer:6432/app' pgq work"): (
        "needs a PgBouncer: tests/test_pgbouncer.py runs the same worker"
    ),
}

PRELUDE = """\
import os
import pgq
import psycopg
import psycopg_pool
import sqlalchemy

app = pgq.App()
dsn = os.environ["PGQ_DSN"]
_parts = psycopg.conninfo.conninfo_to_dict(dsn)
url = sqlalchemy.engine.URL.create(
    "postgresql+psycopg", username=_parts.get("user"), host=_parts.get("host"),
    port=_parts.get("port") and int(_parts["port"]), database=_parts.get("dbname"),
)
"""

WORKER_START_SECONDS = 30.0
WORKER_IDLE_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    body: str
    directive: str | None

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.lang})"

    @property
    def skipped(self) -> bool:
        return self.directive == "skip"

    @property
    def first_line(self) -> str:
        return self.body.split("\n", 1)[0]


def blocks(page: str) -> list[Block]:
    text = (REPO_ROOT / page).read_text()
    return [
        Block(page, text.count("\n", 0, match.start("body")), match["lang"], match["body"],
              match["directive"])
        for match in FENCE.finditer(text)
    ]  # fmt: skip


def seed_dead_jobs(dsn: str) -> None:
    """The jobs the retries page repairs: job 42 and another send_confirmation dead today."""
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE pgq.jobs ALTER COLUMN id RESTART WITH 42")
        seed_job(conn, "dead", task="send_confirmation", finished_ago=600)
        seed_job(conn, "dead", task="send_confirmation", finished_ago=3600)
        seed_job(conn, "dead", task="sync_account", finished_ago=7200)


SETUP: dict[str, Callable[[str], None]] = {"docs/howto/retries.md": seed_dead_jobs}


class Reader:
    """Runs one page's blocks the way a reader would, in one project directory."""

    def __init__(self, project: Path, dsn: str) -> None:
        self.project = project
        self.dsn = dsn
        self.env = {
            **os.environ,
            "PGQ_DSN": dsn,
            "PYTHONPATH": str(project),
            # `pgq` and `python` are this interpreter's, as in the reader's virtualenv.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self.env.pop("DATABASE_URL", None)
        self.workers_started = 0
        self.printed: list[str] = []  # what each command block printed

    def worker_logs(self) -> str:
        return "".join(log.read_text() for log in sorted(self.project.glob("worker-*.log")))

    def run(self, block: Block) -> None:
        if block.lang == "python":
            self._python(block)
        elif block.lang == "sh" and block.directive == "worker":
            for command in _commands(block.body):
                self._worker(block, command)
        elif block.lang == "sh":
            self._check(block, ["bash", "-c", "set -euo pipefail\n" + _reader_shell(block.body)])
        elif block.lang == "sql":
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(block.body)

    def _python(self, block: Block) -> None:
        header = FILE_HEADER.match(block.body)
        if header:
            target = self.project / header["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.body)
        else:
            self._check(block, [sys.executable, "-c", PRELUDE + block.body])

    def _check(self, block: Block, argv: list[str]) -> None:
        done = subprocess.run(
            argv, cwd=self.project, env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"{block} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
        self.printed.append(done.stdout + done.stderr)

    def _worker(self, block: Block, command: str) -> None:
        self.workers_started += 1
        log = self.project / f"worker-{self.workers_started}.log"
        with log.open("w") as log_file:
            worker = subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=self.project, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                self._wait_for(lambda: "started: tasks" in log.read_text(), worker, block, log)
                self._wait_for(lambda: self._unfinished() == 0, worker, block, log)
            finally:
                os.killpg(worker.pid, signal.SIGTERM)
                code = worker.wait(timeout=60)
        output = log.read_text()
        assert code == 0, f"{block}: `{command}` exited {code}:\n{output}"
        assert "Traceback" not in output, f"{block}: `{command}` logged a traceback:\n{output}"

    def _wait_for(
        self, condition: Callable[[], bool], worker: subprocess.Popen[bytes], block: Block,
        log: Path,
    ) -> None:  # fmt: skip
        deadline = time.monotonic() + WORKER_IDLE_TIMEOUT_SECONDS
        while not condition():
            assert worker.poll() is None, f"{block}: worker exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{block}: timed out:\n{log.read_text()}"
            time.sleep(0.1)

    def _unfinished(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pgq.jobs WHERE status IN ('queued', 'running')"
            ).fetchone()
        assert row is not None
        return int(row[0])


def _commands(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.strip() and not line.startswith("#")]


def _reader_shell(body: str) -> str:
    """The block as the reader runs it, with the test's database for theirs."""
    return "\n".join(line for line in body.splitlines() if not line.startswith("export PGQ_DSN="))


def test_every_block_names_its_language_and_is_run_or_explained() -> None:
    skipped = set()
    for page in PAGES:
        for block in blocks(page):
            assert block.lang in RUNNABLE | NOT_CODE, f"{block}: name the block's language"
            assert block.directive in (None, "worker", "skip"), f"{block}: {block.directive!r}?"
            if block.skipped:
                key = next(
                    (k for k in SKIPPED if k[0] == page and block.first_line.startswith(k[1])), None
                )
                assert key is not None, f"{block}: a skipped block nobody has explained in SKIPPED"
                skipped.add(key)
    assert skipped == set(SKIPPED), f"SKIPPED names blocks that are gone: {set(SKIPPED) - skipped}"


def test_the_pages_have_code() -> None:
    assert len(blocks("docs/quickstart.md")) >= 8
    assert "docs/howto/retries.md" in PAGES


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_written(page: str, make_dsn: Callable[..., str], tmp_path: Path) -> None:
    dsn = make_dsn(migrated=page not in MIGRATES_ITSELF)
    if page in SETUP:
        SETUP[page](dsn)
    reader = Reader(tmp_path, dsn)
    for block in blocks(page):
        if block.lang in RUNNABLE and not block.skipped:
            reader.run(block)
    if page in OUTCOME:
        OUTCOME[page](reader)


def quickstart_outcome(reader: Reader) -> None:
    """The reader's order is stored, and both of its jobs ran once and succeeded."""
    with psycopg.connect(reader.dsn) as conn:
        jobs = conn.execute("SELECT task, status, attempts FROM pgq.jobs ORDER BY id").fetchall()
        orders = conn.execute("SELECT customer FROM orders").fetchall()
    assert jobs == [("send_confirmation", "succeeded", 1), ("resize_image", "succeeded", 1)]
    assert orders == [("ada",)]
    logs = reader.worker_logs()
    assert "order 1: confirmation sent to ada@example.com" in logs
    claim = re.search(
        r"`pgq migrate` prints `([^`]+)`", (REPO_ROOT / "docs/quickstart.md").read_text()
    )
    assert claim is not None and claim[1] in "".join(reader.printed), "what migrate prints"
    assert "resizing https://example.com/cat.png" in logs


def readme_outcome(reader: Reader) -> None:
    with psycopg.connect(reader.dsn) as conn:
        jobs = conn.execute("SELECT task, status FROM pgq.jobs ORDER BY id").fetchall()
    assert jobs == [("send_confirmation", "succeeded"), ("resize_image", "succeeded")]
    assert "order 1: confirmation sent (attempt 1)" in reader.worker_logs()


def django_outcome(reader: Reader) -> None:
    """Ada's order and its receipt job committed and ran; Bob's rolled back, job and all."""
    with psycopg.connect(reader.dsn) as conn:
        jobs = conn.execute("SELECT task, status FROM pgq.jobs ORDER BY id").fetchall()
        orders = conn.execute("SELECT customer, receipt_sent FROM shop_order").fetchall()
    assert jobs == [("shop.tasks.send_receipt", "succeeded")]
    assert orders == [("ada", True)]
    assert "SUCCESSFUL receipt sent to ada" in "".join(reader.printed)


def middleware_outcome(reader: Reader) -> None:
    """The handler's and the middleware's lines carry their job, as the page shows them."""
    lines = [json.loads(line) for line in reader.worker_logs().splitlines() if line.startswith("{")]
    mine = {(line["message"], line.get("job_id"), line.get("task"), line.get("attempt"))
            for line in lines if line["logger"] == "tasks"}  # fmt: skip
    assert ("sending invoice 42 to acme", 1, "send_invoice", 1) in mine
    assert ("returned 'invoice 42 sent'", 1, "send_invoice", 1) in mine
    assert ("attempt 1 of 1 failed: rates service is down", 2, "refresh_rates", 1) in mine


def opentelemetry_outcome(reader: Reader) -> None:
    """The worker's run span continues the trace the reader's script printed."""
    printed = re.search(r"^trace ([0-9a-f]{32})$", "".join(reader.printed), re.MULTILINE)
    assert printed is not None, reader.printed
    logs = reader.worker_logs()
    assert '"name": "process send_invoice"' in logs and '"name": "render pdf"' in logs
    assert f'"trace_id": "0x{printed[1]}"' in logs


OUTCOME: dict[str, Callable[[Reader], None]] = {
    "README.md": readme_outcome,
    "docs/quickstart.md": quickstart_outcome,
    "docs/howto/django.md": django_outcome,
    "docs/howto/middleware.md": middleware_outcome,
    "docs/howto/opentelemetry.md": opentelemetry_outcome,
}
MIGRATES_ITSELF = {"README.md", "docs/quickstart.md", "docs/howto/django.md"}
