"""The leak check behind the pytest plugin: leaked greenlets and errors the hub reported.

`LeakCheck` remembers which gevent ``Greenlet``s are alive when a test starts and
wraps the hub's ``print_exception`` (called exactly when the hub reports an error,
such as "Greenlet failed") for the test's duration. `LeakCheck.finish` settles the
process, so greenlets that were about to finish do, restores the hub, kills greenlets
that the test started and left running, and describes what went wrong.
Greenlets flagged ``_greentask_internal`` (the `FakeClock` autojump helper) are not
leaks.
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

from ._settle import is_internal, settle

__all__ = ["LeakCheck", "alive_greenlets"]

_MISSING: Any = object()
# Frames in these packages are skipped when telling where a leaked greenlet was spawned.
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


def _spawned_at(glet: gevent.Greenlet[..., Any]) -> str:
    """Where ``glet`` was spawned: the innermost frame outside gevent and greentask.testing."""
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
        self._before: weakref.WeakSet[gevent.Greenlet[..., Any]] = weakref.WeakSet(alive_greenlets())
        self.hub_errors: list[tuple[object, BaseException]] = []
        self._previous = self._hub.__dict__.get("print_exception", _MISSING)
        self._original = self._hub.print_exception
        setattr(self._hub, "print_exception", self._print_exception)  # noqa: B010 - instance attribute, test only

    def _print_exception(self, context: object, type_: Any, value: Any, tb: Any) -> None:
        error = value if isinstance(value, BaseException) else type_() if isinstance(type_, type) else None
        if error is not None:
            self.hub_errors.append((context, error))
        self._original(context, type_, value, tb)

    def _restore(self) -> None:
        hub = self._hub
        if hub.__dict__.get("print_exception") == self._print_exception:
            if self._previous is _MISSING:
                del hub.print_exception
            else:
                setattr(hub, "print_exception", self._previous)  # noqa: B010

    def finish(self) -> str | None:
        """Stop watching; kill leaked greenlets; return what went wrong, or None."""
        try:
            if not self._hub.dead:
                settle()
        finally:
            self._restore()
        leaked = [glet for glet in alive_greenlets() if glet not in self._before and not is_internal(glet)]
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
