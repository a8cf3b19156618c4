"""Context: cancellation, deadlines, values and a clock, shared across greenlets.

A port of Go's ``context.Context`` to gevent.

Design
------
A `Context` is a thin handle: a parent (for value lookup), a clock, an optional
key/value pair and a *cancel state* (`_State`). Contexts made by `with_value` share
their parent's state, so they cost nothing to keep and never need cancelling; contexts
made by `with_cancel` / `with_deadline` own a fresh state registered as a child of the
parent's state. Contexts from `background` / `without_cancel` have no state: they are
never cancelled.

Cancelling a state walks its subtree iteratively (no recursion limit), sets ``err`` /
``cause`` on every descendant at once (so ``ctx.cancelled`` is true everywhere as soon
as ``cancel`` returns), unregisters the state from its parent (a long-lived parent never
accumulates cancelled children) and releases deadline timers. Everything that *waits*
on a state (greenlets in `Context.wait`, `Context.cancellable` blocks, `on_cancel`
functions, ``gevent.wait`` links) is a callback in the state's dict, keyed by the waiter
itself, so a killed waiter removes itself in O(1) (killing N greenlets parked on one
shared ``Event`` is quadratic, see SPEC §8). The callbacks run in the hub, once, in
registration order, in a single loop callback scheduled by the canceller (at once when
the canceller is the hub itself, e.g. a deadline timer); a waiter that left in the
meantime is skipped. Cancelling N waiters is O(N), with no kill involved. A children
set or callback dict that becomes empty is dropped (``None``), since Python's sets and
dicts never shrink: a burst of children or waiters leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import gevent
from gevent import getcurrent
from gevent.hub import Waiter, get_hub
from greenlet import GreenletExit

from ._clock import REAL_CLOCK, Clock, MonotonicClock, TimerHandle

__all__ = [
    "CancelFunc",
    "Cancelled",
    "Clock",
    "Context",
    "DeadlineExceeded",
    "MonotonicClock",
    "TimerHandle",
    "background",
    "with_cancel",
    "with_deadline",
    "with_timeout",
    "with_value",
    "without_cancel",
]

logger = logging.getLogger("greentask")


class Cancelled(GreenletExit):
    """The error of a cancelled context, and what `Context.cancellable` raises.

    A `BaseException` (through gevent's ``GreenletExit``), like ``trio.Cancelled`` and
    ``asyncio.CancelledError``, so ``except Exception`` does not swallow it.
    """


class DeadlineExceeded(Cancelled):
    """The error of a context whose deadline passed."""


class CancelFunc(Protocol):
    """The ``cancel(cause=None)`` function returned with a cancellable context."""

    def __call__(self, cause: BaseException | None = None) -> None:
        """Cancel the context and its descendants (idempotent)."""


_NO_KEY: Any = object()


def _run_callbacks(states: list[_State]) -> None:
    """Run (in the hub) the callbacks of freshly cancelled states, each at most once."""
    for state in states:
        callbacks = state.callbacks
        if not callbacks:
            continue
        for key, callback in list(callbacks.items()):
            # A waiter that left before we got here has removed its entry: skip it.
            if callbacks.pop(key, None) is None:
                continue
            try:
                callback()
            except Exception:
                logger.exception("greentask: a context cancellation callback failed")


class _State:
    """The cancellation state shared by a cancellable context and its value children."""

    __slots__ = (
        "__weakref__",
        "callbacks",
        "cause",
        "children",
        "deadline",
        "err",
        "hook",
        "parent",
        "timer",
    )

    def __init__(self, parent: _State | None, deadline: float | None) -> None:
        self.err: Cancelled | None = None
        self.cause: BaseException | None = None
        self.deadline = deadline
        self.parent = parent
        self.children: set[_State] | None = None
        self.callbacks: dict[Hashable, Callable[[], Any]] | None = None
        self.timer: TimerHandle | None = None
        # A synchronous hook run by whichever greenlet cancels (the manager uses it).
        self.hook: Callable[[], None] | None = None

    def cancel(self, cause: BaseException | None = None) -> None:
        """Cancel with ``Cancelled``; ``cause`` becomes ``ctx.cause`` (idempotent)."""
        if cause is not None and not isinstance(cause, BaseException):
            msg = f"cause must be an exception instance or None, got {cause!r}"
            raise TypeError(msg)
        if self.err is not None:
            return
        self.cancel_with(Cancelled("context cancelled"), cause)

    def expire(self) -> None:
        """Deadline timer callback: cancel with ``DeadlineExceeded``."""
        self.timer = None
        if self.err is None:
            self.cancel_with(DeadlineExceeded("context deadline exceeded"), None)

    def attach(self, parent: _State) -> None:
        """Register as a child of ``parent`` (or inherit its cancellation)."""
        if parent.err is not None:
            self.err = parent.err
            self.cause = parent.cause
            self.parent = None
            return
        children = parent.children
        if children is None:
            children = parent.children = set()
        children.add(self)

    def cancel_with(self, err: Cancelled, cause: BaseException | None) -> None:
        """Cancel this (not yet cancelled) state and its subtree with ``err``."""
        if cause is None:
            cause = err
        parent = self.parent
        if parent is not None and parent.children is not None:
            # Unregister: a long-lived parent never accumulates cancelled children.
            siblings = parent.children
            siblings.discard(self)
            if not siblings:
                # Drop the emptied set: a set never shrinks, so a burst of children
                # would otherwise keep its table alive as long as the parent.
                parent.children = None
        if self.children is None and self.callbacks is None and self.timer is None and self.hook is None:
            # A leaf nobody waits on (most cancels: a request's context when it is done).
            self.err = err
            self.cause = cause
            self.parent = None
            return
        to_notify: list[_State] = []
        hooks: list[Callable[[], None]] = []
        stack = [self]
        while stack:
            state = stack.pop()
            state.err = err
            state.cause = cause
            state.parent = None
            timer = state.timer
            if timer is not None:
                state.timer = None
                timer.cancel()
            if state.hook is not None:
                hooks.append(state.hook)
                state.hook = None
            if state.callbacks:
                to_notify.append(state)
            children = state.children
            if children:
                state.children = None
                stack.extend(children)
        for hook in hooks:
            try:
                hook()
            except Exception:
                logger.exception("greentask: a cancellation hook failed")
        if to_notify:
            hub = get_hub()
            if getcurrent() is hub:
                _run_callbacks(to_notify)
            else:
                hub.loop.run_callback(_run_callbacks, to_notify)

    def add_callback(self, key: Hashable, callback: Callable[[], Any]) -> None:
        callbacks = self.callbacks
        if callbacks is None:
            callbacks = self.callbacks = {}
        callbacks[key] = callback

    def remove_callback(self, key: Hashable) -> bool:
        callbacks = self.callbacks
        if callbacks is None or callbacks.pop(key, None) is None:
            return False
        if not callbacks:
            self.callbacks = None  # a dict never shrinks; let a burst of waiters go
        return True


def _check_seconds(name: str, value: object, *, positive: bool = False, finite: bool = False) -> float:
    """Validate a duration: a number (not a bool), not NaN, >= 0 (> 0 if ``positive``),
    and not infinite if ``finite``. Shared by every greentask argument in seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} must be a number of seconds, got {value!r}"
        raise TypeError(msg)
    if not (value > 0 if positive else value >= 0) or (finite and math.isinf(value)):  # NaN fails both
        if positive:
            kind = "positive, finite" if finite else "positive"
        else:
            kind = "finite, non-negative" if finite else "non-negative"
        msg = f"{name} must be a {kind} number of seconds, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _check_key(key: object) -> None:
    if key is None:
        msg = "key must not be None"
        raise TypeError(msg)
    try:
        hash(key)
    except TypeError:
        msg = f"key must be hashable, got {key!r}"
        raise TypeError(msg) from None


def _check_context(name: str, value: object) -> Context:
    if not isinstance(value, Context):
        msg = f"{name} must be a greentask Context, got {value!r}"
        raise TypeError(msg)
    return value


def _check_clock(clock: object) -> Clock:
    # A class (``background(FakeClock)``) has callable ``now``/``call_at`` too: reject it.
    if isinstance(clock, type) or not (
        callable(getattr(clock, "now", None)) and callable(getattr(clock, "call_at", None))
    ):
        msg = f"clock must be an object with now() and call_at(when, callback, *args), got {clock!r}"
        raise TypeError(msg)
    return clock  # type: ignore[return-value]


def _call_logged(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        logger.exception("greentask: on_cancel function %r failed", fn)


class _AfterFunc:
    __slots__ = ("fn", "group", "task")

    def __init__(self, fn: Callable[[], object], group: Any = None, task: Any = None) -> None:
        self.fn = fn
        self.group = group  # a manager's Group: it waits for these before cleanup
        self.task = task  # the manager's record of the task whose context this is

    def fire(self) -> None:
        group = self.group
        if group is None:
            gevent.spawn(_call_logged, self.fn)
            return
        greenlet = group.spawn(_call_logged, self.fn)
        if self.task is not None:
            self.task.callback_started(greenlet)  # its cleanup waits for it too


class CancelScope:
    """The block returned by `Context.cancellable`; see there.

    ``cancelled_caught`` tells, after the block, whether it was interrupted by its
    context's cancellation (like trio's ``CancelScope.cancelled_caught``). A scope
    can be entered once; entering it again raises ``RuntimeError``.
    """

    __slots__ = ("_active", "_ctx", "_greenlet", "_thrown", "cancelled_caught")

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._greenlet: Any = None
        self._active = False
        self._thrown: BaseException | None = None
        self.cancelled_caught = False

    def __enter__(self) -> CancelScope:
        if self._greenlet is not None:
            msg = "each cancellable() block can only be entered once"
            raise RuntimeError(msg)
        self._greenlet = getcurrent()
        self._active = True
        state = self._ctx._state
        if state is not None:
            if state.err is not None:
                get_hub().loop.run_callback(self._deliver)
            else:
                self._ctx._add(state, self, self._deliver)
        return self

    def _deliver(self) -> None:
        # Runs in the hub, so the greenlet is parked at a blocking call.
        greenlet = self._greenlet
        state = self._ctx._state
        if not self._active or greenlet.dead or state is None or state.err is None:
            return
        err = state.err
        exc = type(err)(*err.args)
        self._thrown = exc
        greenlet.throw(exc)

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        self._active = False
        self._ctx._remove(self)
        state = self._ctx._state
        # Swallow the Cancelled this block threw in, and ``ctx.check()``'s (the context's
        # own ``err``): both mean "this block's context was cancelled". Anything else,
        # including another context's cancellation or a kill, propagates.
        if exc is not None and (exc is self._thrown or (state is not None and exc is state.err)):
            self.cancelled_caught = True
            return True
        return False


class Context:
    """Carries cancellation, a deadline, values and a clock across greenlets.

    Make one with `background`, then derive children with `with_cancel`,
    `with_timeout`, `with_deadline`, `with_value` or `without_cancel`. Safe to share
    between greenlets of one hub.

    Cancellation is cooperative: check `cancelled`, block in `wait`, sleep with
    `sleep`, or call `check`. Inside ``with ctx.cancellable():`` it is pre-emptive.
    A context also works with ``gevent.wait([ctx, event, ...])`` / ``gevent.iwait``:
    it is ready once cancelled.
    """

    __slots__ = ("__weakref__", "_clock", "_key", "_parent", "_state", "_value")

    def __init__(
        self,
        parent: Context | None,
        state: _State | None,
        clock: Clock,
        key: Any = _NO_KEY,
        value: Any = None,
    ) -> None:
        self._parent = parent
        self._state = state
        self._clock = clock
        self._key = key
        self._value = value

    # -- state ----------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once this context was cancelled (directly, by a parent or a deadline)."""
        state = self._state
        return state is not None and state.err is not None

    @property
    def err(self) -> Cancelled | None:
        """``Cancelled`` (or ``DeadlineExceeded``) once cancelled, else None."""
        state = self._state
        return None if state is None else state.err

    @property
    def cause(self) -> BaseException | None:
        """The ``cause`` given to ``cancel``, else `err`; a parent's when cancelled through it."""
        state = self._state
        return None if state is None else state.cause

    @property
    def deadline(self) -> float | None:
        """The time (on `clock`) at which this context is cancelled, or None."""
        state = self._state
        return None if state is None else state.deadline

    @property
    def clock(self) -> Clock:
        """The clock all durations of this context are measured on."""
        return self._clock

    @property
    def task_name(self) -> str | None:
        """The name of the manager's task this context belongs to, or None outside a task.

        Set on the context a `TaskManager` gives each task (and seen by every context
        derived from it); a nested manager's task sees its own name, not the path.
        """
        info = self.value(_TASK_KEY)
        return None if info is None else str(info.name)

    @property
    def stop_deadline(self) -> float | None:
        """When (clock time) the manager will kill this task, once it is being stopped.

        None before this context is cancelled, outside a task, and when no
        ``stop_timeout`` applies to the task. Draining tasks finish their own graceful
        steps before it, so that a graceful stop never ends in the manager's kill.
        """
        state = self._state
        if state is None or state.err is None:
            return None
        info = self.value(_TASK_KEY)
        return None if info is None else info.stop_deadline

    def value(self, key: Hashable, default: Any = None) -> Any:
        """Return the value stored under ``key`` by `with_value` here or in a parent.

        The nearest one wins (a child's `with_value` shadows a parent's). Lookup walks
        through every kind of child, including `with_cancel` and `without_cancel`.

        Args:
            key: the key given to `with_value` (compared with ``==``).
            default: returned when no context on the way up has ``key``.

        Raises:
            TypeError: ``key`` is None or unhashable (it could never have been stored).
        """
        _check_key(key)
        ctx: Context | None = self
        while ctx is not None:
            ctx_key = ctx._key
            if ctx_key is not _NO_KEY and (ctx_key is key or ctx_key == key):
                return ctx._value
            ctx = ctx._parent
        return default

    # -- waiting --------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Block this greenlet until cancelled or ``timeout`` seconds (clock time) pass.

        Returns at once if already cancelled, or if ``timeout`` is 0. A context that is
        never cancelled (`background`, `without_cancel`) waits for the timeout only;
        with ``timeout=None`` it blocks forever. Many greenlets may wait on one context;
        killing any of them costs O(1).

        Args:
            timeout: seconds to wait at most, on `clock`; None waits for cancellation
                only.

        Returns:
            `cancelled`: True if woken by cancellation, False if the timeout passed.

        Raises:
            TypeError: ``timeout`` is not a number.
            ValueError: ``timeout`` is negative or NaN.

        Example::

            while not ctx.wait(5):   # every 5 s until cancelled
                report_progress()
        """
        if timeout is not None:
            timeout = _check_seconds("timeout", timeout)
        state = self._state
        if state is not None and state.err is not None:
            return True
        if timeout == 0:
            return False
        self._block(timeout)
        return state is not None and state.err is not None

    def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` on the context clock, or less if cancelled.

        ``sleep(0)`` yields to other greenlets (``gevent.sleep(0)``).

        Args:
            seconds: how long to sleep, on `clock`.

        Returns:
            True if the full time passed, False if cancellation woke it first (or the
            context was already cancelled).

        Raises:
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is negative or NaN.

        Example::

            while ctx.sleep(interval):
                poll()
        """
        seconds = _check_seconds("seconds", seconds)
        state = self._state
        if state is not None and state.err is not None:
            return False
        if seconds == 0:
            gevent.sleep(0)
        else:
            self._block(seconds)
        return state is None or state.err is None

    def _block(self, timeout: float | None) -> None:
        waiter: Any = Waiter()
        state = self._state
        if state is not None:
            self._add(state, waiter, waiter.switch_args)
        timer = None
        if timeout is not None:
            clock = self._clock
            timer = clock.call_at(clock.now() + timeout, waiter.switch_args)
        try:
            waiter.get()
        finally:
            if state is not None:
                self._remove(waiter)
            if timer is not None:
                timer.cancel()

    def check(self) -> None:
        """Raise `err` if cancelled (a checkpoint); return otherwise.

        The same `err` instance is raised each time, its traceback reset first, so
        calling ``check`` in a loop does not grow it. Inside a `cancellable` block of
        this context, the block swallows it.

        Raises:
            Cancelled: the context is cancelled (`DeadlineExceeded` for a deadline).
        """
        state = self._state
        if state is not None and state.err is not None:
            raise state.err.with_traceback(None)

    def on_cancel(self, fn: Callable[[], object]) -> Callable[[], bool]:
        """Run ``fn()`` once, in its own greenlet, when this context is cancelled.

        If it already is, ``fn`` starts soon (never synchronously). On a context that
        is never cancelled, ``fn`` never runs. An exception ``fn`` raises is logged to
        the ``greentask`` logger, never printed by gevent's hub. (Go's
        ``context.AfterFunc``.)

        Args:
            fn: a callable taking no arguments.

        Returns:
            ``stop()``: unregisters ``fn``; returns True if that prevented it from
            being started, False if it was already started (or never registered).

        Raises:
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            msg = f"fn must be callable, got {fn!r}"
            raise TypeError(msg)
        entry = _after_func(self, fn)
        state = self._state
        if state is None:
            return _stopped
        if state.err is not None:
            entry.fire()
            return _stopped

        def stop() -> bool:
            return self._remove(entry)

        self._add(state, entry, entry.fire)
        return stop

    def cancellable(self) -> CancelScope:
        """A block in which this context's cancellation interrupts the greenlet.

        While the current greenlet is inside ``with ctx.cancellable():``, cancellation
        raises `Cancelled` (`DeadlineExceeded` for a deadline; a fresh instance) into
        it at once, interrupting any blocking gevent call: a socket read, ``Queue.get``,
        ``gevent.sleep``. When that exception leaves the block it is swallowed and
        execution continues after the ``with`` (``scope.cancelled_caught`` is then
        True); so is the `err` that `check` raises inside the block. If the context is
        already cancelled on entry, the body runs until its first blocking call, which
        raises (trio's rule). Nested blocks on different contexts each catch only their
        own cancellation; a kill or another context's `Cancelled` propagates. Only the
        greenlet that entered is interrupted, and only while inside: after the block is
        left a late cancellation no longer reaches it.

        Returns:
            A `CancelScope`, to be entered once.

        Example::

            with ctx.cancellable() as scope:
                data = sock.recv(1024)   # interrupted by cancellation
            if scope.cancelled_caught:
                return
        """
        return CancelScope(self)

    # -- gevent.wait / gevent.iwait protocol -----------------------------------

    def rawlink(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(self)`` in the hub once cancelled (gevent's wait protocol).

        This is what makes ``gevent.wait([ctx, ...])`` and ``gevent.iwait`` work. If
        the context is already cancelled, the callback runs soon (and `unlink` can
        still prevent it). On a context that is never cancelled it never runs. The
        callback must not block; an exception it raises is logged.

        Args:
            callback: a callable taking the context.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            msg = f"callback must be callable, got {callback!r}"
            raise TypeError(msg)
        state = self._state
        if state is None:
            return
        self._add(state, self._link_key(callback), lambda: callback(self))
        if state.err is not None:
            # Already cancelled: call it soon, from the dict, so `unlink` can still stop it.
            get_hub().loop.run_callback(_run_callbacks, [state])

    def unlink(self, callback: Callable[[Any], Any]) -> None:
        """Remove a callback added with `rawlink` (no-op if it is not registered).

        Args:
            callback: the callable given to `rawlink`.
        """
        self._remove(self._link_key(callback))

    def _link_key(self, callback: Callable[[Any], Any]) -> Hashable:
        # Equal bound methods give equal keys (gevent unlinks with a fresh one); an
        # unhashable callback (a method of an object defining __eq__ only) by identity.
        try:
            hash(callback)
        except TypeError:
            return ("link-id", id(callback), self)
        return ("link", callback, self)

    def _add(self, state: _State, key: Hashable, callback: Callable[[], Any]) -> None:
        """Register a cancellation callback (every registration goes through here)."""
        state.add_callback(key, callback)

    def _remove(self, key: Hashable) -> bool:
        """Unregister ``key`` from this context's (current) state."""
        state = self._state
        return False if state is None else state.remove_callback(key)

    def ready(self) -> bool:
        """Same as `cancelled` (gevent's naming)."""
        return self.cancelled

    def __repr__(self) -> str:
        if self._state is None:
            status = "never cancelled"
        elif self._state.err is not None:
            status = f"cancelled: {self._state.err!r}"
        else:
            status = "active"
        extra = f" deadline={self.deadline:.3f}" if self.deadline is not None else ""
        return f"<Context {status}{extra}>"


class _TaskContext(Context):
    """A manager's execute-task context that shares the run context's state until it must not.

    Most execute tasks are never stopped alone, so their context costs one object: it
    reads the run context's cancellation state (like `with_value`), and its waiters
    register on that state, so cancelling the run context wakes them exactly as before.
    It gets a state of its own (`_split`) only when it must be cancelled alone
    (``handle.stop()``) or when a context is derived from it: the registrations made
    through it so far (tracked in ``_keys``) move to the new state, a child of the run
    context's, so nothing is missed.
    """

    __slots__ = ("_keys", "_own")

    def __init__(self, parent: Context, info: object) -> None:  # no super() call: a hot path
        state = self._state = parent._state
        self._parent = parent
        self._clock = parent._clock
        self._key = _TASK_KEY
        self._value = info
        self._own = state is None
        self._keys: Any = None  # registrations made through it while shared: one key or a set

    def _add(self, state: _State, key: Hashable, callback: Callable[[], Any]) -> None:
        state.add_callback(key, callback)
        if not self._own:
            keys = self._keys
            if keys is None:
                self._keys = key
            elif type(keys) is _KeySet:
                keys.add(key)
            else:
                self._keys = _KeySet((keys, key))

    def _remove(self, key: Hashable) -> bool:
        state = self._state
        if not self._own:
            keys = self._keys
            if type(keys) is _KeySet:
                keys.discard(key)
            elif keys is key or keys == key:
                self._keys = None
        return False if state is None else state.remove_callback(key)

    def _split(self) -> _State:
        """Give this context its own state (a child of the shared one); return it."""
        shared = self._state
        if self._own:
            assert shared is not None
            return shared
        assert shared is not None
        state = _State(shared, shared.deadline)
        state.attach(shared)
        keys = self._keys
        self._keys = None
        moved = keys if type(keys) is _KeySet else () if keys is None else (keys,)
        callbacks = shared.callbacks
        for key in moved:
            callback = None if callbacks is None else callbacks.pop(key, None)
            if callback is not None:
                state.add_callback(key, callback)
        if callbacks is not None and not callbacks:
            shared.callbacks = None
        self._state = state
        self._own = True
        if state.err is not None and state.callbacks:
            get_hub().loop.run_callback(_run_callbacks, [state])
        return state


class _KeySet(set):  # type: ignore[type-arg]
    """The registrations of a shared `_TaskContext` when it has more than one."""

    __slots__ = ()


def _own_state(ctx: Context) -> _State | None:
    """``ctx``'s state, split off first if ``ctx`` is a shared task context."""
    if type(ctx) is _TaskContext and not ctx._own:
        return ctx._split()
    return ctx._state


def _stopped() -> bool:
    return False


def background(clock: Clock | None = None) -> Context:
    """Return a root context that is never cancelled.

    It has no deadline and no values; derive the contexts you cancel from it.

    Args:
        clock: where time is read and timers armed, for this context and every
            context derived from it; defaults to the real clock
            (``time.monotonic()``, timers on gevent's loop). Pass a
            `greentask.testing.FakeClock` in tests.

    Returns:
        A new root `Context`.

    Raises:
        TypeError: ``clock`` is not an object with ``now()`` and ``call_at()``.

    Example::

        ctx, cancel = gt.with_timeout(gt.background(), 30)
    """
    return Context(None, None, REAL_CLOCK if clock is None else _check_clock(clock))


def with_cancel(parent: Context) -> tuple[Context, CancelFunc]:
    """Return a child of ``parent`` and a ``cancel(cause=None)`` function.

    Cancelling the parent cancels the child (and all its descendants, synchronously:
    ``cancelled`` is true everywhere when ``cancel`` returns); cancelling the child
    never touches the parent. A child of a cancelled parent is born cancelled, with the
    parent's ``err`` and ``cause``. ``cancel`` is idempotent: only the first call sets
    ``err`` and ``cause``. The child inherits the parent's deadline, values and clock.

    Creating a child is O(1); cancelling is O(descendants). Call ``cancel`` when done
    with the child (like Go): a cancelled child is no longer referenced by its parent,
    so a long-lived parent can make any number of short children.

    Args:
        parent: the context to derive from.

    Returns:
        ``(ctx, cancel)``. ``cancel(cause=None)`` takes an optional exception instance
        that becomes ``ctx.cause``; it raises ``TypeError`` for anything else.

    Raises:
        TypeError: ``parent`` is not a `Context`.

    Example::

        ctx, cancel = gt.with_cancel(parent)
        try:
            work(ctx)
        finally:
            cancel()
    """
    if not isinstance(parent, Context):
        _check_context("parent", parent)
    parent_state = _own_state(parent)
    if parent_state is None:
        state = _State(None, None)
    else:
        state = _State(parent_state, parent_state.deadline)
        children = parent_state.children
        if parent_state.err is not None:
            state.attach(parent_state)
        elif children is None:
            parent_state.children = {state}
        else:
            children.add(state)
    return Context(parent, state, parent._clock), state.cancel


def with_deadline(parent: Context, when: float) -> tuple[Context, CancelFunc]:
    """Like `with_cancel`, and also cancelled with `DeadlineExceeded` at ``when``.

    The context is cancelled when its clock reaches ``when`` (not a moment before);
    a ``when`` already reached gives a context born cancelled. The earlier of the
    parent's deadline and ``when`` wins: if the parent's comes first, no timer is
    armed and the parent's cancellation (with its ``err``) reaches the child. Calling
    ``cancel`` releases the timer.

    Args:
        parent: the context to derive from.
        when: a time on the parent's clock (``parent.clock.now()`` scale).

    Returns:
        ``(ctx, cancel)``, as for `with_cancel`.

    Raises:
        TypeError: ``parent`` is not a `Context`, or ``when`` is not a number.
        ValueError: ``when`` is NaN.
    """
    _check_context("parent", parent)
    if isinstance(when, bool) or not isinstance(when, int | float):
        msg = f"when must be a clock time in seconds, got {when!r}"
        raise TypeError(msg)
    if math.isnan(when):
        msg = f"when must be a clock time in seconds, not NaN, got {when!r}"
        raise ValueError(msg)
    clock = parent._clock
    parent_state = _own_state(parent)
    parent_deadline = None if parent_state is None else parent_state.deadline
    own = parent_deadline is None or when < parent_deadline
    state = _State(parent_state, float(when) if own else parent_deadline)
    ctx = Context(parent, state, clock)
    if parent_state is not None:
        state.attach(parent_state)
    if state.err is None and own:
        if clock.now() >= when:
            state.expire()
        else:
            state.timer = clock.call_at(when, state.expire)
    return ctx, state.cancel


def with_timeout(parent: Context, seconds: float) -> tuple[Context, CancelFunc]:
    """`with_deadline` at ``parent.clock.now() + seconds``.

    Args:
        parent: the context to derive from.
        seconds: how long from now, on the parent's clock; 0 gives a context born
            cancelled, ``math.inf`` one that never times out.

    Returns:
        ``(ctx, cancel)``, as for `with_cancel`; ``ctx.err`` is `DeadlineExceeded`
        once the time has passed.

    Raises:
        TypeError: ``parent`` is not a `Context`, or ``seconds`` is not a number.
        ValueError: ``seconds`` is negative or NaN.

    Example::

        ctx, cancel = gt.with_timeout(parent, 5)
        try:
            fetch(ctx)
        finally:
            cancel()
    """
    _check_context("parent", parent)
    seconds = _check_seconds("seconds", seconds)
    return with_deadline(parent, parent._clock.now() + seconds)


#: The key under which a manager stores its task's record (``name``, ``label`` and
#: ``stop_deadline`` attributes) in the task's context.
_TASK_KEY: Any = object()
#: The key under which a manager stores itself in its run context (an object with an
#: ``after_group``: the `on_cancel` callbacks of its contexts run in that group, so the
#: manager can wait for them before cleanup).
_RUN_KEY: Any = object()


def _after_func(ctx: Context, fn: Callable[[], object]) -> _AfterFunc:
    """An `on_cancel` entry, run in its manager's group and known to its task (if any).

    One walk up the parents: the nearest task record below the nearest run context.
    """
    task = None
    node: Context | None = ctx
    while node is not None:
        key = node._key
        if key is _TASK_KEY and task is None:
            task = node._value
        elif key is _RUN_KEY:
            return _AfterFunc(fn, node._value.after_group, task)
        node = node._parent
    return _AfterFunc(fn)


def _task_context(parent: Context, info: object, *, linked: bool, key: Any = _TASK_KEY) -> tuple[Context, CancelFunc]:
    """A manager's per-task (or run) context: a cancellable child carrying ``info`` under ``key``.

    ``linked``: cancelled with ``parent`` (StopOrder.TOGETHER). Unlinked (REVERSE), it
    keeps the parent's values, clock and deadline but is cancelled only by its own
    ``cancel``: the manager cancels it at the task's turn. One object either way (O(1)).
    """
    parent_state = _own_state(parent)
    if parent_state is None:
        state = _State(None, None)
    else:
        state = _State(parent_state if linked else None, parent_state.deadline)
        if linked:
            state.attach(parent_state)
    return Context(parent, state, parent._clock, key, info), state.cancel


def _release(ctx: Context) -> None:
    """Detach a finished task's context from its parent without cancelling it (O(1)).

    A manager's run context would otherwise keep every finished task's context alive.
    The released context is no longer reached by the parent's cancellation.
    """
    if type(ctx) is _TaskContext and not ctx._own:
        return  # it shares its parent's state: nothing of its own to detach
    state = ctx._state
    if state is None:
        return
    parent = state.parent
    if parent is not None:
        children = parent.children
        if children is not None:
            children.discard(state)
            if not children:
                parent.children = None
        state.parent = None


def _task_label(ctx: Context) -> str:
    """``"web: task 'poller'"`` for a task's context (manager and task), for log lines.

    Falls back to ``"task"`` outside a manager's task.
    """
    info = ctx.value(_TASK_KEY)
    label = None if info is None else getattr(info, "label", None)
    return "task" if label is None else str(label)


def with_value(parent: Context, key: Hashable, value: Any) -> Context:
    """Return a child of ``parent`` carrying ``value`` under ``key``.

    It shares the parent's cancellation, deadline and clock (it has no ``cancel`` of
    its own and costs one small object). `Context.value` walks up the parents, so the
    nearest ``key`` wins. Keys are compared with ``==``; use a private object to avoid
    clashes between libraries.

    Args:
        parent: the context to derive from.
        key: a hashable key, not None.
        value: any value.

    Returns:
        The child `Context`.

    Raises:
        TypeError: ``parent`` is not a `Context`, or ``key`` is None or unhashable.
    """
    _check_context("parent", parent)
    _check_key(key)
    return Context(parent, _own_state(parent), parent._clock, key, value)


def without_cancel(parent: Context) -> Context:
    """Return a child with ``parent``'s values and clock that is never cancelled.

    Neither the parent's cancellation nor its deadline reaches it (Go's
    ``WithoutCancel``); contexts derived from it can be cancelled on their own. Use it
    for cleanup work that must run after the parent was cancelled.

    Args:
        parent: the context to derive from.

    Returns:
        The child `Context` (``deadline`` None, ``cancelled`` always False).

    Raises:
        TypeError: ``parent`` is not a `Context`.
    """
    _check_context("parent", parent)
    return Context(parent, None, parent._clock)
