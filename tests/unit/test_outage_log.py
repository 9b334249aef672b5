"""OutageLog: one warning when a retrying loop loses Redis, one a minute after, one when back."""

from __future__ import annotations

import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from app.core.redis import OutageLog


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@given(
    start=st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
    gaps=st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=1, max_size=200),
)
def test_an_outage_is_a_warning_then_one_a_minute_then_one_recovery(
    start: float, gaps: list[float]
) -> None:
    """From any clock origin (a freshly booted machine reads near 0): the first failure
    warns, later ones at most once per 60 s of the clock, recovery once."""
    clock = Clock(start)
    outage = OutageLog(structlog.get_logger("test"), "listener_disconnected", 60.0, clock)
    with capture_logs() as logs:
        outage.failed("ConnectionError")
        for gap in gaps:
            clock.now += gap
            outage.failed("ConnectionError")
        lasted = clock.now - start
        outage.recovered()
        outage.recovered()  # already connected: nothing more
    warnings = [e for e in logs if e["event"] == "listener_disconnected"]
    assert "still" not in warnings[0]
    assert 1 <= len(warnings) <= 1 + lasted / 60.0 + 1e-9
    assert all(w["log_level"] == "warning" for w in warnings)
    [back] = [e for e in logs if e["event"] == "listener_disconnected_recovered"]
    assert back["failures"] == len(gaps) + 1


def test_a_new_outage_after_a_recovery_warns_at_once() -> None:
    clock = Clock(0.0)
    outage = OutageLog(structlog.get_logger("test"), "lost", 60.0, clock)
    with capture_logs() as logs:
        outage.failed("ConnectionError")
        clock.now = 1.0
        outage.recovered()
        clock.now = 2.0
        outage.failed("TimeoutError")
    assert [e["event"] for e in logs] == ["lost", "lost_recovered", "lost"]
    assert logs[-1]["error"] == "TimeoutError"
