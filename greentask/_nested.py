"""A `TaskManager` as a task of another manager: supervision trees (SPEC §12).

``parent.add_task("pipeline", child)`` makes the child a `Task`:

- ``child.initialize(ctx)`` runs the child's initialize phase under ``ctx`` (the parent's
  task context for it); on a failure the child cleans up what it initialized and raises;
- ``child.execute(ctx)`` runs its execute phase and shutdown until every execute of the
  child finished; clean when the child recorded no error, else it raises;
- ``child.cleanup(ctx)`` runs its cleanup phase.

What a child stage raises to signal failure is a `_SubtreeFailed` carrying the child's
errors; the parent never records it but the child's errors, with the nested task's
name as a path prefix (``"pipeline/db"``), so errors, ``stop_reason``, ``status()``
rows and events all carry path names at any depth. A nested task with ``restart=`` is
restarted as a whole (OTP's one_for_all): the parent's restart cycle calls the child's
cleanup, initialize and execute again; `_reset` gives it fresh per-run state and drops
tasks added to it at runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import _Phase, _SubtreeFailed
from ._record import _Record
from ._supervisor import _Supervisor
from .context import Context
from .errors import ManagerStateError, TaskStatus

if TYPE_CHECKING:
    from .manager import TaskManager

__all__ = ["_Nested"]


class _Nested(_Supervisor):
    _prerun: tuple[list[_Record], list[_Record]] | None = None  # the tasks to run again on a restart

    if TYPE_CHECKING:  # the phases, in TaskManager

        def status(self) -> list[TaskStatus]: ...
        def _begin(self, parent: Context) -> None: ...
        def _initialize_phase(self) -> bool: ...
        def _execute_phase(self) -> None: ...
        def _cleanup_phase(self) -> None: ...
        def _finish(self) -> None: ...
        def _reset(self) -> None: ...

    # -- joining a tree -----------------------------------------------------------

    def _check_nestable(self, child: TaskManager) -> None:
        if child is self:
            msg = "a task manager cannot be added to itself"
            raise ManagerStateError(msg)
        if child._nested_in is not None:
            msg = f"task manager {child.name!r} is already part of a supervision tree; it cannot be added twice"
            raise ManagerStateError(msg)
        if child._phase is not _Phase.NEW:
            msg = f"task manager {child.name!r} has already run; only a manager that has never run can be nested"
            raise ManagerStateError(msg)

    def _adopt(self, child: TaskManager, record: _Record) -> None:
        """Make ``child`` a nested manager: its events reach this one with path names."""
        child._nested_in = record
        child._parent_manager = self
        prefix = record.name

        def forward(kind: str, task_name: str, error: BaseException | None) -> None:
            self._emit(kind, f"{prefix}/{task_name}", error)

        child._forward = forward

    def _nested_rows(self, record: _Record) -> list[TaskStatus]:
        child = record.task
        if not isinstance(child, _Nested) or child._nested_in is not record:
            return []
        prefix = record.name
        rows = []
        for row in child.status():
            rows.append(
                TaskStatus(
                    name=f"{prefix}/{row.name}",
                    kind=row.kind,
                    task_type=row.task_type,
                    state=row.state,
                    error=row.error,
                    started_at=row.started_at,
                    stopped_at=row.stopped_at,
                    restarts=row.restarts,
                )
            )
        return rows

    def _children(self) -> list[tuple[str, _Nested]]:
        return [
            (record.name, record.task)
            for record in self._order
            if isinstance(record.task, _Nested) and record.task._nested_in is record
        ]

    # -- the Task protocol ------------------------------------------------------------

    def initialize(self, ctx: Context) -> None:
        """Run this (nested) manager's initialize phase under ``ctx`` (SPEC §12).

        Raises:
            ManagerStateError: this manager is not nested, or is running.
            Exception: a `_SubtreeFailed` when one of its tasks failed (its parent
                records the path-named errors instead).
        """
        self._require_nested("initialize")
        if self._phase is _Phase.DONE:
            self._rerun()
        elif self._phase is not _Phase.NEW:
            msg = f"task manager {self._name!r} is already running; will not initialize again"
            raise ManagerStateError(msg)
        if self._prerun is None:
            self._prerun = (list(self._order), list(self._queued))
        self._begin(ctx)
        if not self._initialize_phase():
            self._cleanup_phase()
            self._finish()
            self._raise_new_errors()

    def execute(self, ctx: Context) -> None:
        """Run this (nested) manager's execute phase and shutdown (SPEC §12).

        Returns once every execute of the child finished: cleanly if it recorded no
        error (a completed STOP_GROUP, `stop`), else raises for its parent.
        """
        self._require_nested("execute")
        if self._phase is not _Phase.INITIALIZING:
            return  # its initialize phase ended it (a cancelled start-up)
        self._execute_phase()
        self._raise_new_errors()

    def cleanup(self, ctx: Context) -> None:
        """Run this (nested) manager's cleanup phase (SPEC §12)."""
        self._require_nested("cleanup")
        if self._phase is _Phase.DONE or self._phase is _Phase.NEW:
            return
        try:
            self._cleanup_phase()
        finally:
            self._finish()
        self._raise_new_errors()

    def _require_nested(self, stage: str) -> None:
        if self._nested_in is None:
            msg = f"{stage}() runs a task manager as a task of another manager; use run() for a root manager"
            raise ManagerStateError(msg)

    def _raise_new_errors(self) -> None:
        new = self._errors[self._reported :]
        self._reported = len(self._errors)
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal
        if new:
            raise _SubtreeFailed(new, self._stop_reason)

    def _rerun(self) -> None:
        """A subtree restart: the tasks added before the first run, with fresh state."""
        assert self._prerun is not None
        order, queued = self._prerun
        self._order = list(order)
        self._queued = list(queued)
        self._records = {r.seq: r for r in (*order, *queued)}
        self._task_ids = {id(r.task) for r in order}
        for record in (*order, *queued):
            record.reset()
        self._reset()

    # -- views over the tree ------------------------------------------------------------

    def _tree(self) -> list[tuple[str, Any]]:
        """This manager and its nested managers: ``(path, manager)``, root first as its name."""
        tree: list[tuple[str, Any]] = [(self._name, self)]
        for prefix, child in self._children():
            tree.extend(_prefixed_tree(prefix, child))
        return tree

    def _task_objects(self) -> list[tuple[str, object]]:
        """``(path name, task object)`` of every task, depth first (the user's objects)."""
        objects: list[tuple[str, object]] = []
        for record in list(self._records.values()):
            objects.append((record.name, record.task))
            if isinstance(record.task, _Nested) and record.task._nested_in is record:
                objects.extend((f"{record.name}/{name}", obj) for name, obj in record.task._task_objects())
        return objects

    def _error_counts(self) -> dict[tuple[str, str], int]:
        """``(path name, stage) -> count`` of recorded errors and restarted failures."""
        counts = dict(self._error_counter)
        for prefix, child in self._children():
            for (name, stage), count in child._error_counts().items():
                key = (f"{prefix}/{name}", stage)
                counts[key] = counts.get(key, 0) + count
        return counts

    def _stop_timeout_counts(self) -> dict[str, int]:
        """``path name -> count`` of `StopTimeout` errors recorded for the task."""
        counts = dict(self._timeout_counter)
        for prefix, child in self._children():
            for name, count in child._stop_timeout_counts().items():
                key = f"{prefix}/{name}"
                counts[key] = counts.get(key, 0) + count
        return counts


def _prefixed_tree(prefix: str, child: _Nested) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [(prefix, child)]
    for sub_prefix, grandchild in child._children():
        rows.extend((f"{prefix}/{path}", m) for path, m in _prefixed_tree(sub_prefix, grandchild))
    return rows
