"""The leak check behind the pytest plugin: leaked greenlets and errors the hub reported.

`LeakCheck` watches one test:

- **Greenlets.** A leak is a gevent ``Greenlet`` that started running during the test
  and is still alive at its end. The greenlet trace hook of `settle` (kept installed
  for the test's duration) reports every greenlet that starts running; greenlets whose
  start was already scheduled before the test (found in the loop's callback queue, say
  spawned by a module-scoped fixture) are not the test's. This costs next to nothing
  per test, unlike scanning every object with ``gc`` (done only when the loop's queue
  cannot be read). Not seen: a greenlet delayed with ``spawn_later`` whose start
  comes after the end of the test.
- **Hub errors.** The hub's ``print_exception`` (called exactly when the hub reports
  an error, such as "Greenlet failed" or a failing loop callback) is wrapped for the
  test's duration; the error is still printed.

`LeakCheck.finish` settles the process (greenlets that were about to finish do),
restores the hub, kills leaked greenlets and describes what went wrong. Greenlets
flagged ``_greentask_internal`` (the `FakeClock` autojump helper) are never leaks.
"""

from __future__ import annotations

import gc
import itertools
import os
import traceback
import weakref
from typing import Any

import gevent
from gevent.hub import get_hub

from ._settle import ACTIVITY, is_internal, settle

__all__ = ["LeakCheck", "alive_greenlets"]

_MISSING: Any = object()
# Frames in these directories are skipped when telling where a leaked greenlet was
# spawned (gevent's own, and greentask's: the user's call site is what helps).
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(init)) + os.sep for init in (gevent.__file__, os.path.dirname(__file__)) if init
)


def alive_greenlets() -> list[gevent.Greenlet[..., Any]]:
    """Every gevent ``Greenlet`` that has been started and has not finished.

    Scans the objects the garbage collector tracks. The type test is done with C-level
    iterators (one ``issubclass`` per distinct type), several times faster than a
    Python loop over every object.
    """
    objects = gc.get_objects()
    types = {kind for kind in set(map(type, objects)) if issubclass(kind, gevent.Greenlet)}
    found = itertools.compress(objects, map(types.__contains__, map(type, objects)))
    return [glet for glet in found if glet]


def _scheduled_greenlets(hub: Any) -> list[gevent.Greenlet[..., Any]] | None:
    """Greenlets whose start is queued as a loop callback; None if the queue is unreadable."""
    try:
        callbacks = list(hub.loop._callbacks)
    except Exception:  # noqa: BLE001 - a private attribute: fall back to a full scan
        return None
    scheduled = []
    for callback in callbacks:
        owner = getattr(getattr(callback, "callback", None), "__self__", None)
        if isinstance(owner, gevent.Greenlet):
            scheduled.append(owner)
    return scheduled


def _spawned_at(glet: gevent.Greenlet[..., Any]) -> str:
    """Where ``glet`` was spawned: the innermost frame outside gevent and greentask."""
    stack = getattr(glet, "spawning_stack", None)
    if stack is None:
        return ""
    try:
        entries = traceback.extract_stack(stack)
    except Exception:  # noqa: BLE001 - a best-effort hint only
        return ""
    if not entries:
        return ""
    chosen = entries[-1]
    for entry in reversed(entries):
        if not os.path.abspath(entry.filename).startswith(_LIBRARY_DIRS):
            chosen = entry
            break
    return f" (spawned at {chosen.filename}:{chosen.lineno} in {chosen.name})"


class LeakCheck:
    """Watch one test: call `finish` at its end to get a failure message or None."""

    def __init__(self) -> None:
        self._hub: Any = get_hub()
        scheduled = _scheduled_greenlets(self._hub)
        not_ours = alive_greenlets() if scheduled is None else scheduled
        self._not_ours: weakref.WeakSet[Any] = weakref.WeakSet(not_ours)
        self._started: weakref.WeakSet[Any] = weakref.WeakSet()
        self.hub_errors: list[tuple[object, BaseException]] = []
        self._finished = False
        ACTIVITY.__enter__()
        ACTIVITY.first_run_observers.append(self._on_first_run)
        self._previous = self._hub.__dict__.get("print_exception", _MISSING)
        self._original = self._hub.print_exception
        setattr(self._hub, "print_exception", self._print_exception)  # noqa: B010 - instance attribute, test only

    def _on_first_run(self, glet: object) -> None:
        if isinstance(glet, gevent.Greenlet) and glet not in self._not_ours:
            self._started.add(glet)

    def _print_exception(self, context: object, type_: Any, value: Any, tb: Any) -> None:
        if isinstance(value, BaseException):
            self.hub_errors.append((context, value))
        elif isinstance(type_, type) and issubclass(type_, BaseException):
            self.hub_errors.append((context, type_()))
        self._original(context, type_, value, tb)

    def _stop_watching(self) -> None:
        if self._finished:
            return
        self._finished = True
        ACTIVITY.first_run_observers.remove(self._on_first_run)
        ACTIVITY.__exit__()
        hub = self._hub
        if hub.__dict__.get("print_exception") == self._print_exception:
            if self._previous is _MISSING:
                del hub.print_exception
            else:
                setattr(hub, "print_exception", self._previous)  # noqa: B010

    def finish(self) -> str | None:
        """Stop watching; kill leaked greenlets; return what went wrong, or None."""
        try:
            settle()
        finally:
            self._stop_watching()
        leaked = [glet for glet in list(self._started) if glet and not is_internal(glet)]
        problems: list[str] = []
        if self.hub_errors:
            count = len(self.hub_errors)
            problems.append(f"the gevent hub reported {count} error{'s' if count != 1 else ''} during the test:")
            problems.extend(f"    {error!r} in {context!r}" for context, error in self.hub_errors)
        if leaked:
            described = [f"    {glet!r}{_spawned_at(glet)}" for glet in leaked]
            gevent.killall(leaked, block=True, timeout=1.0)
            count = len(leaked)
            problems.append(f"{count} greenlet{'s were' if count != 1 else ' was'} left running (now killed):")
            problems.extend(described)
        self.hub_errors = []
        if not problems:
            return None
        return "\n".join(["greentask leak check failed:", *problems])
