"""Backoff: exponential delays, the cap, jitter bounds, reset, argument checks."""

from __future__ import annotations

import math
import random

import pytest

from greentask.tasks import Backoff


def test_defaults_match_the_spec() -> None:
    backoff = Backoff()
    assert (backoff.initial, backoff.maximum, backoff.factor, backoff.jitter) == (0.1, 30.0, 2.0, 0.1)


def test_without_jitter_delays_double_from_initial_and_are_capped_at_maximum() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, factor=2.0, jitter=0)
    delays = [backoff.next_delay() for _ in range(7)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert backoff.attempts == 7


def test_factor_one_gives_a_constant_delay() -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, factor=1.0, jitter=0)
    assert [backoff.next_delay() for _ in range(4)] == [0.5, 0.5, 0.5, 0.5]


def test_reset_starts_over_at_initial() -> None:
    backoff = Backoff(initial=0.25, maximum=8.0, factor=3.0, jitter=0)
    assert [backoff.next_delay() for _ in range(3)] == [0.25, 0.75, 2.25]
    backoff.reset()
    assert backoff.attempts == 0
    assert [backoff.next_delay() for _ in range(2)] == [0.25, 0.75]


def test_many_steps_stay_finite_at_the_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=30.0, factor=10.0, jitter=0)
    delays = [backoff.next_delay() for _ in range(5000)]
    assert delays[-1] == 30.0
    assert all(math.isfinite(d) for d in delays)


def test_jitter_stays_within_bounds_of_the_uncompounded_base() -> None:
    jitter = 0.25
    backoff = Backoff(initial=0.1, maximum=5.0, factor=2.0, jitter=jitter, rng=random.Random(1234))
    base = 0.1
    ratios = []
    for step in range(400):
        if step % 20 == 0:
            backoff.reset()
            base = 0.1
        delay = backoff.next_delay()
        assert base * (1 - jitter) <= delay <= base * (1 + jitter), (step, base, delay)
        ratios.append(delay / base)
        base = min(base * 2.0, 5.0)  # the base never carries the jitter over
    # The spread is really used, on both sides.
    assert min(ratios) < 1 - jitter / 2
    assert max(ratios) > 1 + jitter / 2


def test_a_seeded_rng_makes_the_delays_reproducible() -> None:
    first = Backoff(jitter=0.5, rng=random.Random(7))
    second = Backoff(jitter=0.5, rng=random.Random(7))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


def test_default_rng_gives_jittered_delays() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.5)
    delays = {backoff.next_delay() for _ in range(50)}
    assert len(delays) > 1
    assert all(0.5 <= d <= 1.5 for d in delays)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"initial": 0}, ValueError, "initial must be a positive"),
        ({"initial": -1.0}, ValueError, "initial must be a positive"),
        ({"initial": "1"}, TypeError, "initial must be a number"),
        ({"initial": True}, TypeError, "initial must be a number"),
        ({"initial": math.nan}, ValueError, "initial must be a finite"),
        ({"maximum": math.inf}, ValueError, "maximum must be a finite"),
        ({"initial": 2.0, "maximum": 1.0}, ValueError, r"maximum must be .*>= initial"),
        ({"factor": 0.5}, ValueError, "factor must be >= 1"),
        ({"factor": None}, TypeError, "factor must be a number"),
        ({"jitter": -0.1}, ValueError, "jitter must be in the range"),
        ({"jitter": 1.0}, ValueError, "jitter must be in the range"),
        ({"rng": object()}, TypeError, "rng must be a random.Random"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_repr_shows_the_settings() -> None:
    assert repr(Backoff(0.5, 4.0, 3.0, 0.0)) == "Backoff(initial=0.5, maximum=4.0, factor=3.0, jitter=0.0)"
