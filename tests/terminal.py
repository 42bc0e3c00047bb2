"""Run `python -m pgq` with a terminal on stdin, as an operator at a shell runs it."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from worker_helpers import REPO_ROOT


def run_pgq_on_a_terminal(
    *args: str, answer: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m pgq ARGS`` whose stdin is a pseudo-terminal where ``answer`` is typed.

    The answer is typed ahead: the terminal holds it until pgq reads its question's
    answer, as it would hold keys an operator pressed early. stdout and stderr are
    pipes, so that the test reads what pgq printed, question included.
    """
    env = {
        k: v for k, v in os.environ.items() if k not in ("PGQ_DSN", "DATABASE_URL", "PGQ_SCHEMA")
    }
    leader, follower = pty.openpty()
    try:
        os.write(leader, answer.encode())
        return subprocess.run(
            [sys.executable, "-m", "pgq", *args],
            stdin=follower, capture_output=True, text=True, env={**env, "COLUMNS": "200"},
            cwd=REPO_ROOT, timeout=timeout, check=False,
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
