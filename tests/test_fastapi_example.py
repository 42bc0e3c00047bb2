"""examples/fastapi_shop, run as its README says: the API on a real PostgreSQL, the job run by a
real `pgq work` process, its result read back over HTTP."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_shop"


@pytest.fixture
def client(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("PGQ_DSN", dsn)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in [m for m in sys.modules if m == "storefront" or m.startswith("storefront.")]:
        del sys.modules[name]
    api = importlib.import_module("storefront.api")
    with TestClient(api.api) as test_client:  # runs the startup hook
        yield test_client
    api.engine.dispose()


@pytest.fixture
def worker(dsn: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pgq", "work", "storefront.tasks:app", "--dsn", dsn],
        cwd=EXAMPLE, env={**os.environ, "PYTHONPATH": str(EXAMPLE)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    yield process
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def job_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pgq.jobs").fetchone()
    assert row is not None
    return int(row[0])


def wait_for_status(client: TestClient, job_id: int, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if body["status"] == status or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_an_order_and_its_job_commit_together_and_the_result_comes_back(
    client: TestClient, worker: subprocess.Popen[str], dsn: str
) -> None:
    placed = client.post("/orders", json={"id": 7, "item": "book"})

    assert placed.status_code == 201, placed.text
    job_id = placed.json()["job_id"]
    assert wait_for_status(client, job_id, "succeeded") == {
        "id": job_id, "status": "succeeded", "attempts": 1,
        "result": {"item": "book", "tracking": "TRK000007"}, "last_error": None,
    }  # fmt: skip


def test_a_rejected_order_leaves_no_job(client: TestClient, dsn: str) -> None:
    assert client.post("/orders", json={"id": 1, "item": "pen"}).status_code == 201

    again = client.post("/orders", json={"id": 1, "item": "pen"})

    assert again.status_code == 409 and again.json() == {"detail": "order 1 exists"}
    assert job_count(dsn) == 1, "the rolled-back order took its job with it"


def test_an_unknown_job_is_a_404(client: TestClient) -> None:
    missing = client.get("/jobs/424242")

    assert missing.status_code == 404 and missing.json() == {"detail": "no job 424242"}
