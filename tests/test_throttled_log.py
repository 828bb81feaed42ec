"""ThrottledLog: the first line of a kind at once, repeats summed up once a period."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mtproxy.throttled_log import ThrottledLog

log = logging.getLogger("mtproxy.test.throttled")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


async def test_a_storm_is_one_line_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    throttled = ThrottledLog(log, period=0.2)
    for _ in range(500):
        throttled.log(logging.INFO, "dc2", "DC 2 unreachable")
    throttled.log(logging.WARNING, "dc4", "DC 4 unreachable")
    assert lines(caplog) == ["DC 2 unreachable", "DC 4 unreachable"]
    await asyncio.sleep(0.35)
    assert lines(caplog)[2:] == ["DC 2 unreachable (and 499 more times in 0.2s)"]
    # A kind that did not repeat leaves no summary; the next storm starts a new period.
    throttled.log(logging.INFO, "dc2", "DC 2 unreachable")
    assert lines(caplog)[-1] == "DC 2 unreachable"
    throttled.close()


async def test_close_writes_what_is_pending_and_cancels_the_timers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    throttled = ThrottledLog(log, period=60)
    throttled.log(logging.INFO, "k", "first")
    throttled.log(logging.INFO, "k", "first")
    throttled.log(logging.INFO, "quiet", "only once")
    throttled.close()
    assert lines(caplog) == ["first", "only once", "first (and 1 more times in 60s)"]
    records = [r for r in caplog.records if r.name == log.name]
    assert records[-1].levelno == logging.INFO
    await asyncio.sleep(0)
    throttled.close()  # nothing left: no more lines
    assert len(lines(caplog)) == 3
