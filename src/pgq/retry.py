"""Retry policy: backoff with jitter, and when a failed job has no attempt left.

Pure functions, so that tests can check the arithmetic. Both places that fail a
job use them: a worker recording a handler's failure (pgq.worker.outcome) and
rescue returning the job of a lost worker (pgq.rescue).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pgq.errors import ConfigError, shown
from pgq.job import MAX_DELAY_SECONDS


@dataclass(frozen=True, slots=True)
class Retry:
    """How long a failed job waits before its next attempt.

    The delay before attempt ``n + 1`` is ``min(cap, base * 2 ** (n - 1))``, then
    jittered down by up to half so that jobs that failed together (an outage) do
    not all come back in the same instant.

    Example: ``@app.task(retry=pgq.Retry(base_seconds=2, cap_seconds=600))``.
    """

    base_seconds: float = 1.0
    cap_seconds: float = 3600.0

    def __post_init__(self) -> None:
        base, cap = self.base_seconds, self.cap_seconds
        if not _is_number(base) or not 0 < base <= MAX_DELAY_SECONDS:
            raise ConfigError(
                f"Retry base_seconds must be > 0 and at most {MAX_DELAY_SECONDS:g}, "
                f"got {shown(base)}"
            )
        if not _is_number(cap) or not base <= cap <= MAX_DELAY_SECONDS:
            raise ConfigError(
                f"Retry cap_seconds ({shown(cap)}) must be >= base_seconds "
                f"({shown(base)}) and at most {MAX_DELAY_SECONDS:g}"
            )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


DEFAULT_RETRY = Retry()


# Doublings that take the smallest float (2 ** -1074) past the largest (~2 ** 1024).
FLOAT_EXPONENT_SPAN = 2100


def backoff_ceiling(attempt: int, policy: Retry) -> float:
    """The un-jittered delay after failed attempt number ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    doublings = attempt - 1
    # Exact powers of two (ldexp), not logarithms: log2(cap) - log2(base) rounds to 0 for
    # a base one ulp below its cap. Past the float range the answer is the cap.
    if doublings > FLOAT_EXPONENT_SPAN:
        return policy.cap_seconds
    try:
        return min(policy.cap_seconds, math.ldexp(policy.base_seconds, doublings))
    except OverflowError:
        return policy.cap_seconds


def backoff_seconds(attempt: int, policy: Retry, rng: random.Random | None = None) -> float:
    """The delay before retrying after failed attempt ``attempt``: in [ceiling/2, ceiling]."""
    ceiling = backoff_ceiling(attempt, policy)
    draw = (rng or random).random()
    # Clamped: with subnormal floats (a base near 1e-323 s) the sum can round outside.
    return min(ceiling, max(ceiling / 2, ceiling / 2 + draw * ceiling / 2))


def retry_delay(
    attempt: int, max_attempts: int, policy: Retry, rng: random.Random | None = None
) -> float | None:
    """Seconds until the next attempt after attempt ``attempt`` failed; None if none is left.

    None means the job is dead: it used its last attempt. An attempt count of 0
    (a row set running by hand) waits as attempt 1 does.
    """
    if attempt >= max_attempts:
        return None
    return backoff_seconds(max(attempt, 1), policy, rng)
