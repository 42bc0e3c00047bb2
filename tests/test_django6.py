"""The test project on Django 6's built-in ``django.tasks``, in a Python 3.12 virtualenv.

The suite's own interpreter is Python 3.11, where only Django 5.2 and the django-tasks
backport install (tests/test_django.py). This builds, once, a Python 3.12 virtualenv with
this pgq (editable, so the source under test) and Django 6 from PyPI, keyed by what it
installs, and runs the same project there through ``manage.py``: checks, migrate, a view that
enqueues (and one that rolls back), ``pgq_work``, and the result read back.

The interpreter is $PGQ_PYTHON312, else pyenv's 3.12.1. Without it the test fails: it never
skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from worker_helpers import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT = REPO_ROOT / "tests" / "django_project"
PYTHON312 = Path(os.environ.get("PGQ_PYTHON312", "/root/.pyenv/versions/3.12.1/bin/python"))
REQUIREMENTS = ["django>=6,<7"]
BUILD_SECONDS = 600
RUN_SECONDS = 60.0


def django6_python() -> Path:
    """The cached virtualenv's python, built first if this key has none yet."""
    if not PYTHON312.is_file():
        pytest.fail(
            f"no Python 3.12 at {PYTHON312}: Django 6 needs one. Install it (pyenv install "
            "3.12.1) or set PGQ_PYTHON312 to a python3.12"
        )
    key = hashlib.sha256(
        "\n".join([str(PYTHON312), str(REPO_ROOT), (REPO_ROOT / "pyproject.toml").read_text(),
                   *REQUIREMENTS]).encode()
    ).hexdigest()[:12]  # fmt: skip
    home = REPO_ROOT / ".venv" if (REPO_ROOT / ".venv").is_dir() else Path(sys.prefix)
    venv = home / f"django6-{key}"
    python = venv / "bin" / "python"
    ready = venv / "pgq-ready"
    if ready.is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)  # a build that was cut short
    for argv in (
        [str(PYTHON312), "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "-e", str(REPO_ROOT), *REQUIREMENTS],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_SECONDS)
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"
    ready.write_text("\n".join(REQUIREMENTS))
    return python


def test_the_project_runs_on_django_6s_own_tasks_framework(
    make_dsn: Callable[..., str], tmp_path: Path
) -> None:
    python = django6_python()
    dsn = make_dsn(migrated=False)
    env = {**os.environ, "PGQ_DSN": dsn, "PYTHONUNBUFFERED": "1"}
    for name in ("DATABASE_URL", "PYTHONPATH", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)

    def manage(*args: str) -> str:
        done = subprocess.run(
            [str(python), "manage.py", *args], cwd=PROJECT, env=env, capture_output=True,
            text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 0, f"manage.py {args[0]}:\n{done.stdout}{done.stderr}"
        return done.stdout

    versions = manage("shell", "-c", VERSIONS)
    assert json.loads(versions.strip().splitlines()[-1]) == {
        "python": [3, 12], "django": 6, "compat": "django.tasks", "backport": False,
    }  # fmt: skip
    manage("check", "--fail-level", "WARNING")
    assert "Applying pgq.0001_pgq_schema... OK" in manage("migrate")

    placed = json.loads(manage("shell", "-c", PLACE_ORDERS).strip().splitlines()[-1])
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT id, task, args FROM pgq.jobs").fetchall()
    # The rolled-back view left no job: only the committed order's.
    assert rows == [
        (int(placed["result_id"]), "store.tasks.send_receipt",
         {"args": [placed["order"]], "kwargs": {"greeting": "Hello"}}),
    ]  # fmt: skip

    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [str(python), "manage.py", "pgq_work", "--processes", "2"], cwd=PROJECT, env=env,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: _finished(dsn), RUN_SECONDS, lambda: log.read_text())
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    read = manage("shell", "-c", READ_RESULT.format(result_id=placed["result_id"]))
    assert json.loads(read.strip().splitlines()[-1]) == {
        "status": "SUCCESSFUL", "text": "Hello, ada!", "receipt_sent": True, "attempts": 1,
    }  # fmt: skip


def _finished(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT bool_and(status = 'succeeded') FROM pgq.jobs").fetchone()
    return bool(row and row[0])


VERSIONS = """
import json, sys, importlib.util, django
from pgq.contrib.django import compat
print(json.dumps({
    "python": list(sys.version_info[:2]), "django": django.VERSION[0],
    "compat": compat.Task.__module__.rpartition(".")[0],
    "backport": importlib.util.find_spec("django_tasks") is not None,
}))
"""

PLACE_ORDERS = """
import json
from django.test import Client
client = Client()
assert client.post("/orders/", {"customer": "bob", "fail": "1"}).status_code == 402
response = client.post("/orders/", {"customer": "ada"})
assert response.status_code == 200, response.content
print(json.dumps(response.json()))
"""

READ_RESULT = """
import json
from store.models import Order
from store.tasks import send_receipt
result = send_receipt.get_result("{result_id}")
order = Order.objects.get(id=result.args[0])
print(json.dumps({{
    "status": result.status, "text": result.return_value["text"],
    "receipt_sent": order.receipt_sent, "attempts": result.attempts,
}}))
"""
