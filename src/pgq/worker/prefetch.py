"""The prefetch: how many jobs a worker holds beyond those its handlers run.

A claim sized to the free slots carries a few jobs per round trip, and quick
handlers then wait on the database rather than the other way round. Holding
more lets one claim and one finish carry a hundred jobs. But a held job waits in
this worker while another worker may be idle (Celery's prefetch problem), so the
prefetch follows the handlers' run time: about ``HOLD_SECONDS`` of waiting per
slot, at most ``MAX_HELD`` jobs in hand, and none at all while handlers are
slow. A handler running longer than the average counts as the run time, so one
stuck job shrinks the prefetch before the average learns of it.
"""

from __future__ import annotations

#: At most this many jobs in a worker's hands, running and waiting together.
MAX_HELD = 250
#: How long a prefetched job may expect to wait for a slot.
HOLD_SECONDS = 0.05
#: Weight of the newest run time in the moving average.
SMOOTHING = 0.1


class Prefetch:
    """The number of jobs to hold beyond ``concurrency``, from handler run times."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.ceiling = max(0, MAX_HELD - concurrency)
        self.average_seconds: float | None = None  # none yet: hold nothing extra

    def observe(self, run_seconds: float) -> None:
        """A handler ran for ``run_seconds``."""
        if self.average_seconds is None:
            self.average_seconds = run_seconds
        else:
            self.average_seconds += SMOOTHING * (run_seconds - self.average_seconds)

    def extra(self, longest_running_seconds: float = 0.0) -> int:
        """Jobs to hold beyond the running ones, given the longest a handler runs now."""
        if self.average_seconds is None:
            return 0
        run_seconds = max(self.average_seconds, longest_running_seconds)
        if run_seconds * self.ceiling <= self.concurrency * HOLD_SECONDS:
            return self.ceiling
        return int(self.concurrency * HOLD_SECONDS / run_seconds)
