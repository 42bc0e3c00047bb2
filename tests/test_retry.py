"""Retry policy (pgq.retry): how long a failed job waits, and when it has no attempt left.

Pure arithmetic, so most checks here are properties over every policy and attempt
(hypothesis), pinned by a few literal tables: a property alone would also hold for a
policy that never grows.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pgq
from pgq.errors import ConfigError
from pgq.job import MAX_DELAY_SECONDS
from pgq.retry import DEFAULT_RETRY, Retry, backoff_ceiling, backoff_seconds, retry_delay

PURE_SETTINGS = settings(max_examples=200, deadline=None)

bases = st.floats(min_value=0, max_value=MAX_DELAY_SECONDS, exclude_min=True)
policies = bases.flatmap(
    lambda base: st.builds(
        Retry, base_seconds=st.just(base), cap_seconds=st.floats(base, MAX_DELAY_SECONDS)
    )
)
attempts = st.integers(min_value=1, max_value=10**6)


class FixedDraw(random.Random):
    """A Random whose draw is always ``value``: the jitter at its extremes."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


LOWEST_DRAW = FixedDraw(0.0)
HIGHEST_DRAW = FixedDraw(math.nextafter(1.0, 0.0))  # random() never returns 1.0 itself
DRAWS = [LOWEST_DRAW, HIGHEST_DRAW, random.Random(7)]

ONE_TO_TEN = Retry(base_seconds=1, cap_seconds=10)


# -- the ceiling: doubling from the base up to the cap ------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (6, 10), (100, 10)]
)
def test_ceilings_of_a_one_to_ten_second_policy_are_1_2_4_8_then_10(
    attempt: int, ceiling: float
) -> None:
    assert backoff_ceiling(attempt, ONE_TO_TEN) == ceiling


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 1), (2, 2), (12, 2048), (13, 3600), (10**6, 3600)]
)
def test_the_default_policy_starts_at_a_second_and_never_waits_more_than_an_hour(
    attempt: int, ceiling: float
) -> None:
    assert backoff_ceiling(attempt, DEFAULT_RETRY) == ceiling


@PURE_SETTINGS
@given(policy=policies, attempt=st.integers(min_value=1, max_value=64))
def test_the_ceiling_doubles_from_one_attempt_to_the_next_until_the_cap_and_then_stays(
    policy: Retry, attempt: int
) -> None:
    this, following = backoff_ceiling(attempt, policy), backoff_ceiling(attempt + 1, policy)

    if attempt == 1:
        assert this == policy.base_seconds
    if this < policy.cap_seconds:
        assert following == min(2 * this, policy.cap_seconds)
    else:
        assert following == this == policy.cap_seconds


@PURE_SETTINGS
@given(policy=policies, first=attempts, second=attempts)
def test_backoff_ceiling_never_shrinks_as_attempts_grow(
    policy: Retry, first: int, second: int
) -> None:
    low, high = sorted((first, second))

    assert backoff_ceiling(low, policy) <= backoff_ceiling(high, policy)


def test_a_base_one_step_below_its_cap_is_the_first_ceiling() -> None:
    # Found by hypothesis: log2(cap) - log2(base) rounded to 0, and the cap came out first.
    policy = Retry(base_seconds=95171051.67936032, cap_seconds=95171051.67936033)

    assert backoff_ceiling(1, policy) == 95171051.67936032
    assert backoff_ceiling(2, policy) == 95171051.67936033


def test_a_policy_with_a_tiny_base_still_reaches_its_cap() -> None:
    policy = Retry(base_seconds=1e-300, cap_seconds=1.0)

    assert backoff_ceiling(10_000, policy) == 1.0
    assert backoff_ceiling(2, Retry(base_seconds=5e-324, cap_seconds=1.0)) == 1e-323


@PURE_SETTINGS
@given(attempt=st.integers(max_value=0))
def test_backoff_refuses_an_attempt_below_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_ceiling(attempt, Retry())


# -- jitter -------------------------------------------------------------------------------------


@PURE_SETTINGS
@given(policy=policies, attempt=attempts)
def test_backoff_delay_is_between_half_the_ceiling_and_the_ceiling_and_never_past_the_cap(
    policy: Retry, attempt: int
) -> None:
    ceiling = backoff_ceiling(attempt, policy)

    assert math.isfinite(ceiling)
    assert policy.base_seconds <= ceiling <= policy.cap_seconds <= MAX_DELAY_SECONDS
    for rng in DRAWS:
        delay = backoff_seconds(attempt, policy, rng)
        assert ceiling / 2 <= delay <= ceiling


def test_the_jitter_spans_half_the_ceiling_to_the_ceiling() -> None:
    # Attempt 4 of 1..10 s: ceiling 8 s.
    assert backoff_seconds(4, ONE_TO_TEN, LOWEST_DRAW) == 4.0
    assert 7.999 < backoff_seconds(4, ONE_TO_TEN, HIGHEST_DRAW) <= 8.0
    assert backoff_seconds(4, ONE_TO_TEN, FixedDraw(0.5)) == 6.0


def test_jobs_that_failed_together_come_back_spread_out() -> None:
    rng = random.Random(2024)
    delays = [backoff_seconds(4, ONE_TO_TEN, rng) for _ in range(200)]

    assert all(4.0 <= delay <= 8.0 for delay in delays)
    assert len(set(delays)) == len(delays)
    assert min(delays) < 4.5 and max(delays) > 7.5, "the whole window is used"


def test_without_a_random_source_the_delay_is_still_within_the_window() -> None:
    delays = {backoff_seconds(3, ONE_TO_TEN) for _ in range(50)}

    assert all(2.0 <= delay <= 4.0 for delay in delays)
    assert len(delays) > 1


# -- retry_delay: the next attempt's delay, or none left ----------------------------------------


@pytest.mark.parametrize(
    ("attempt", "max_attempts"), [(1, 1), (2, 2), (5, 5), (6, 5), (1_000_000, 3)]
)
def test_no_delay_once_the_last_attempt_failed(attempt: int, max_attempts: int) -> None:
    for rng in DRAWS:
        assert retry_delay(attempt, max_attempts, ONE_TO_TEN, rng) is None


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "lowest", "highest"),
    [(1, 2, 0.5, 1.0), (1, 5, 0.5, 1.0), (3, 5, 2.0, 4.0), (4, 5, 4.0, 8.0), (9, 10, 5.0, 10.0)],
)
def test_a_delay_within_the_attempts_window_while_attempts_are_left(
    attempt: int, max_attempts: int, lowest: float, highest: float
) -> None:
    assert retry_delay(attempt, max_attempts, ONE_TO_TEN, LOWEST_DRAW) == lowest
    high = retry_delay(attempt, max_attempts, ONE_TO_TEN, HIGHEST_DRAW)
    assert high is not None and highest * 0.999 < high <= highest


# -- which policies Retry accepts ---------------------------------------------------------------

any_float = st.floats(allow_nan=True, allow_infinity=True)


@PURE_SETTINGS
@given(base=any_float, cap=any_float)
def test_retry_accepts_exactly_the_policies_postgres_can_schedule(base: float, cap: float) -> None:
    valid = 0 < base <= MAX_DELAY_SECONDS and base <= cap <= MAX_DELAY_SECONDS
    if not valid:
        with pytest.raises(ConfigError):
            Retry(base, cap)
        return

    policy = Retry(base, cap)

    assert (policy.base_seconds, policy.cap_seconds) == (base, cap)
    for attempt in (1, 2, 70, 10**6):
        for rng in DRAWS:
            assert base / 2 <= backoff_seconds(attempt, policy, rng) <= cap


BAD_POLICIES: list[tuple[str, dict[str, Any], str]] = [
    ("base_zero", {"base_seconds": 0}, "base_seconds must be > 0"),
    ("base_negative", {"base_seconds": -1}, "base_seconds must be > 0"),
    ("base_nan", {"base_seconds": math.nan}, "base_seconds"),
    ("base_inf", {"base_seconds": math.inf}, "base_seconds"),
    ("base_googol", {"base_seconds": 1e100, "cap_seconds": 1e100}, "at most"),
    ("cap_below_base", {"base_seconds": 10, "cap_seconds": 1},
     r"cap_seconds \(1\) must be >= base_seconds \(10\)"),
    ("cap_nan", {"cap_seconds": math.nan}, "cap_seconds"),
    ("cap_inf", {"cap_seconds": math.inf}, "cap_seconds"),
    ("cap_past_ten_years", {"cap_seconds": MAX_DELAY_SECONDS * 2}, "cap_seconds"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [pytest.param(options, message, id=name) for name, options, message in BAD_POLICIES],
)
def test_retry_refuses_a_policy_postgres_cannot_schedule_naming_the_value(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(pgq.ConfigError, match=message):
        pgq.Retry(**options)
