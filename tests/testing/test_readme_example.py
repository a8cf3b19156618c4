import pytest

import greentask as gt


class HeartbeatLost(Exception):
    """Too many heartbeats in a row failed."""


class Heartbeat:
    """Call ``send()`` every ``interval`` seconds until cancelled."""

    def __init__(self, send, interval=10.0, max_failures=3):
        self.send = send
        self.interval = interval
        self.max_failures = max_failures

    def initialize(self, ctx: gt.Context) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be positive, got {self.interval!r}")

    def execute(self, ctx: gt.Context) -> None:
        failures = 0
        next_beat = ctx.clock.now() + self.interval
        # ctx.sleep waits on the context clock and returns False once ctx is cancelled.
        while ctx.sleep(max(0.0, next_beat - ctx.clock.now())):
            next_beat += self.interval
            try:
                self.send()
            except ConnectionError as exc:
                failures += 1
                if failures == self.max_failures:
                    raise HeartbeatLost(f"{failures} heartbeats in a row failed") from exc
            else:
                failures = 0

    def cleanup(self, ctx: gt.Context) -> None:
        pass


def test_sends_a_heartbeat_every_interval(fake_clock, task_harness):
    sent = []
    harness = task_harness(Heartbeat(lambda: sent.append(fake_clock.now())), clock=fake_clock)
    harness.initialize()
    harness.start()
    fake_clock.advance(35)  # 35 seconds of fake time, no real waiting
    assert sent == [10.0, 20.0, 30.0]
    harness.cancel()
    assert harness.wait(timeout=5) is None  # a clean stop
    harness.cleanup()


def test_gives_up_after_three_failures_in_a_row(fake_clock, task_harness):
    def refuse():
        raise ConnectionError("refused")

    harness = task_harness(Heartbeat(refuse), clock=fake_clock)
    harness.start()
    fake_clock.advance(20)
    assert harness.running  # two failures so far: still trying
    fake_clock.advance(10)
    with pytest.raises(HeartbeatLost, match="3 heartbeats in a row failed"):
        harness.wait(timeout=5)


def test_rejects_a_bad_interval(task_harness):
    harness = task_harness(Heartbeat(lambda: None, interval=0))
    with pytest.raises(ValueError, match="interval must be positive"):
        harness.initialize()
