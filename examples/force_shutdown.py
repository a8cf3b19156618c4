"""A task that ignores cancellation, and how ForceStop still gets the program to exit.

Run it with ``python examples/force_shutdown.py`` and press Ctrl-C (or send SIGTERM)
once it says it is ready.

- ``legacy`` is old blocking code: a loop around ``time.sleep(1)`` that never looks
  at its context. Wrapped in ``greentask.tasks.ForceStop(5, ...)``, it gets 5 seconds
  (``--timeout``) after shutdown begins, then its greenlet is killed and the stop is
  recorded as `greentask.StopTimeout`.
- ``polite`` honours cancellation and stops at once, to show the contrast.

The program monkey-patches first, so ``time.sleep`` yields to gevent: a greenlet is
killed when it next yields, and one that never yields cannot be killed at all.

It prints when shutdown begins and, when the kill happens, ``forced the stop of
'legacy' after 5.0s``. `greentask.run` then returns 1, because a forced stop is an
error (a clean, cooperative stop would give 0). A second Ctrl-C would force the stop
at once instead of waiting for the timeout.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, on purpose
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import greentask as gt  # noqa: E402
from greentask.tasks import ForceStop  # noqa: E402


def say(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


def legacy_loop(ctx: gt.Context) -> None:
    """Old code that never checks its context: only a kill stops it."""
    while True:
        say("legacy", "working (and ignoring cancellation)" if ctx.cancelled else "working")
        time.sleep(1)  # monkey-patched: yields, so the greenlet can be killed


def polite(ctx: gt.Context) -> None:
    """Well-behaved: waits for cancellation, then returns."""
    ctx.wait()
    say("polite", "cancelled: stopping at once")


def build(timeout: float) -> gt.TaskManager:
    """A manager with the stubborn task under ForceStop and a polite one."""
    manager = gt.TaskManager(name="force_shutdown")
    manager.add_task("legacy", ForceStop(timeout, legacy_loop))
    manager.add_execute_task("polite", polite)

    cancelled_at: list[float] = []
    started = 0

    def report(event: gt.ManagerEvent) -> None:
        nonlocal started
        if event.kind == "started":
            started += 1
            if started == 2:
                say("main", f"ready: press Ctrl-C or send SIGTERM; 'legacy' will be killed {timeout}s later")
        elif event.kind == "cancelled":
            cancelled_at.append(event.at)
            say("main", f"shutdown began; giving 'legacy' {timeout}s")
        elif event.kind == "failed" and isinstance(event.error, gt.StopTimeout) and cancelled_at:
            elapsed = event.at - cancelled_at[0]
            say("main", f"forced the stop of {event.task_name!r} after {elapsed:.1f}s: {event.error}")

    manager.subscribe(report)
    return manager


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, build the manager and run it; returns the exit code (1: forced)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before the kill (default 5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    code = gt.run(build(args.timeout))
    say("main", f"exiting with code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
