"""An app with one periodic task that ticks every second and does nothing: the fleet test's."""

from __future__ import annotations

import pgq

app = pgq.App()


@app.periodic("* * * * * *")
def every_second() -> None:
    """Nothing: the test counts the jobs the schedule made, not what they did."""
