"""eventually() / consistently(): bounded real-time polls that describe their predicate."""

from __future__ import annotations

import functools

import gevent
import pytest

from greentask.testing import consistently, eventually

pytestmark = pytest.mark.greentask


def _flip_after_turns(state, key, value, turns):
    def flip():
        for _ in range(turns):
            gevent.idle()
        state[key] = value

    return gevent.spawn(flip)


def test_eventually_returns_the_first_true_value_once_another_greenlet_made_it_true():
    state = {"count": 0}
    _flip_after_turns(state, "count", 3, turns=5)
    assert eventually(lambda: state["count"], timeout=5) == 3


def test_eventually_checks_at_least_once_even_with_no_time():
    assert eventually(lambda: "ready", timeout=0) == "ready"


def test_eventually_treats_an_exception_as_not_yet():
    state = {}
    _flip_after_turns(state, "key", "value", turns=3)
    assert eventually(lambda: state["key"], timeout=5, interval=0) == "value"


def test_eventually_failure_names_the_predicate_and_its_last_value():
    def queue_is_empty():
        return []

    with pytest.raises(AssertionError) as caught:
        eventually(queue_is_empty, timeout=0.02)
    message = str(caught.value)
    assert message.startswith("eventually: test_eventually_failure_names_the_predicate_and_its_last_value.")
    assert "queue_is_empty at " in message
    assert "test_eventually.py:" in message
    assert "was not true within 0.02s" in message
    assert "last returned []" in message


def test_eventually_failure_shows_a_lambdas_source_and_its_last_exception():
    data = {}
    with pytest.raises(AssertionError) as caught:
        eventually(lambda: data["missing"], timeout=0.02)
    message = str(caught.value)
    assert "<lambda> at " in message
    assert 'eventually(lambda: data["missing"], timeout=0.02)' in message
    assert "last raised KeyError('missing')" in message
    assert isinstance(caught.value.__cause__, KeyError)


def test_eventually_describes_other_callables_by_repr():
    predicate = functools.partial(bool, 0)
    with pytest.raises(AssertionError, match=r"eventually: functools\.partial\(<class 'bool'>, 0\)"):
        eventually(predicate, timeout=0)


def test_eventually_lets_other_greenlets_run_between_checks():
    progress = []

    def worker():
        for i in range(3):
            gevent.sleep(0.001)
            progress.append(i)

    gevent.spawn(worker)
    assert eventually(lambda: len(progress) == 3, timeout=5, interval=0.001)


def test_consistently_passes_while_the_predicate_stays_true():
    calls = []

    def stays_true():
        calls.append(1)
        return True

    assert consistently(stays_true, duration=0.03, interval=0.01) is None
    assert len(calls) >= 2  # at once, and once the duration has passed


def test_consistently_fails_when_the_predicate_becomes_false():
    state = {"ok": True}
    _flip_after_turns(state, "ok", False, turns=3)
    with pytest.raises(AssertionError) as caught:
        consistently(lambda: state["ok"], duration=5, interval=0)
    message = str(caught.value)
    assert message.startswith("consistently: ")
    assert 'consistently(lambda: state["ok"], duration=5, interval=0)' in message
    assert "returned False after" in message


def test_consistently_fails_when_the_predicate_raises():
    def broken():
        raise ValueError("bad state")

    with pytest.raises(AssertionError, match=r"broken at .* raised ValueError\('bad state'\) after") as caught:
        consistently(broken, duration=1)
    assert isinstance(caught.value.__cause__, ValueError)


def test_consistently_with_zero_duration_checks_once():
    calls = []
    consistently(lambda: calls.append(1) or True, duration=0)
    assert calls == [1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"timeout": -1}, ValueError, "timeout must be a finite, non-negative number"),
        ({"timeout": "1"}, TypeError, "timeout must be a number of seconds"),
        ({"interval": float("inf")}, ValueError, "interval must be a finite"),
        ({"interval": None}, TypeError, "interval must be a number"),
    ],
)
def test_eventually_validates_its_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        eventually(lambda: True, **kwargs)


def test_both_reject_a_predicate_that_is_not_callable():
    with pytest.raises(TypeError, match="predicate must be callable, got True"):
        eventually(True)
    with pytest.raises(TypeError, match="predicate must be callable, got True"):
        consistently(True)
    with pytest.raises(ValueError, match="duration must be a finite, non-negative number"):
        consistently(lambda: True, duration=-0.1)


def test_a_lambda_without_source_is_described_by_name_and_place():
    predicate = eval("lambda: 0")  # no source file to read the lambda from
    with pytest.raises(AssertionError, match=r"eventually: <lambda> at <string>:1 was not true"):
        eventually(predicate, timeout=0)
