"""A process supervisor: two child processes, one of which keeps crashing and is restarted.

Run it with ``python examples/supervisor.py`` and stop it with Ctrl-C or SIGTERM.

- ``steady`` is a `greentask.tasks.Subprocess`: a child that runs until told to stop.
- ``crashy`` is a child that exits with code 3 after ``--crash-after`` seconds. Its
  `Subprocess` is wrapped in `greentask.tasks.Repeatable` with a
  `greentask.tasks.Backoff`: each crash is logged, then the child is started again
  after a growing, jittered delay (0.5 s, 1 s, 2 s ... up to 5 s).

The children are this same file, run with ``--child NAME``. Each prints its own pid
when it starts, when it crashes and when it receives SIGTERM. On shutdown every
running child gets SIGTERM, exits cleanly, and is reaped before the program exits: no
zombie or orphan is left. The children run in their own sessions
(``start_new_session=True``), so a Ctrl-C in the terminal reaches only the
supervisor, which decides when they stop.

The supervisor monkey-patches first (it waits on child processes).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, on purpose
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import greentask as gt  # noqa: E402
from greentask.tasks import Backoff, Repeatable, Subprocess  # noqa: E402


def say(who: str, text: str) -> None:
    # One write for the whole line: the supervisor and its children share one stdout,
    # and print() may write the text and its newline separately (it does unbuffered,
    # e.g. with PYTHONUNBUFFERED), so two processes' lines could interleave. A write to
    # a pipe of at most PIPE_BUF (4096) bytes is never interleaved with another.
    sys.stdout.write(f"[{who}] {text}\n")
    sys.stdout.flush()


def child_main(name: str, crash_after: float) -> int:
    """The child program (this file run with ``--child NAME``); 0 for ``crash_after``: never crash."""
    pid = os.getpid()

    def on_term(signum: int, frame: object) -> None:
        say(name, f"pid {pid} got SIGTERM, exiting cleanly")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    say(name, f"pid {pid} started")
    deadline = time.monotonic() + crash_after
    while not crash_after or time.monotonic() < deadline:
        time.sleep(0.1)
    say(name, f"pid {pid} crashing with exit code 3")
    return 3


def child(name: str, crash_after: float) -> Subprocess:
    """A Subprocess task running this file as a child, in its own session."""
    return Subprocess(
        [sys.executable, __file__, "--child", name, "--crash-after", str(crash_after)],
        stop_timeout=5.0,
        start_new_session=True,
    )


def build(crash_after: float) -> gt.TaskManager:
    """The steady child as a plain task, the crashy one restarted with backoff."""
    manager = gt.TaskManager(name="supervisor", stop_timeout=10.0)
    manager.add_task("steady", child("steady", 0))

    crashy = child("crashy", crash_after)
    runs = 0

    def run_crashy(ctx: gt.Context) -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            say("supervisor", f"restarting 'crashy' (restart #{runs - 1})")
        crashy.execute(ctx)  # raises CalledProcessError on a crash: Repeatable logs it

    manager.add_execute_task("crashy", Repeatable(run_crashy, backoff=Backoff(initial=0.5, maximum=5.0)))

    started = 0

    def report(event: gt.ManagerEvent) -> None:
        nonlocal started
        if event.kind == "started":
            started += 1
            if started == 2:
                say("supervisor", "ready: supervising 'steady' and 'crashy' (Ctrl-C or SIGTERM to stop)")
        elif event.kind == "cancelled":
            say("supervisor", "stopping the children")

    manager.subscribe(report)
    return manager


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, build the manager and run it; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crash-after", type=float, default=2.0, help="seconds before 'crashy' crashes (default 2)")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)  # how the children are started
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(args.child, args.crash_after)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    code = gt.run(build(args.crash_after))
    say("supervisor", f"all children stopped; exiting with code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
