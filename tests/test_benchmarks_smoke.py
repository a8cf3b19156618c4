"""The benchmark harness runs end to end at N=100 and its table is complete and sane.

No timed assertions: only that every workload and framework appears and that no
cell failed its sanity checks (every task started and stopped, errors as expected);
stop_reverse and restart_storm run for raw gevent and greentask only ("n/a" elsewhere).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trio")
pytest.importorskip("anyio")
pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

WORKLOADS = (
    "spawn_cancel",
    "spawn_complete",
    "dynamic_add",
    "failure_propagation",
    "forced_stop",
    "memory",
    "context_churn",
    "stop_reverse",
    "restart_storm",
)
FRAMEWORKS = ("raw gevent", "greentask", "asyncio TaskGroup", "trio nursery", "anyio (asyncio)")
#: Workloads only raw gevent and greentask run (the first two columns).
GREENTASK_ONLY = ("stop_reverse", "restart_storm")


def _table_rows(report: str, title: str = "## Results") -> list[list[str]]:
    section = report.split(title, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]


def test_harness_runs_every_workload_and_framework_without_fail(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(RUN), "--n", "100", "--repeats", "1", "--churn-n", "2000"]
    cmd += ["--jobs", "2", "--timeout", "60", "--output", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]

    report = output.read_text(encoding="utf-8")
    assert report.strip() == proc.stdout.strip()
    rows = _table_rows(report)
    header, body = rows[0], rows[2:]
    assert header[3:] == list(FRAMEWORKS)
    assert {row[0] for row in body} == set(WORKLOADS)
    for row in body:
        assert len(row) == len(header), row
        assert row[1] == ("2,000" if row[0] == "context_churn" else "100"), row
        for cell in row[3:]:
            assert cell not in ("", "-"), row
        if row[0] in GREENTASK_ONLY:
            assert "n/a" not in row[3:5], row
            assert row[5:] == ["n/a"] * len(row[5:]), row
        else:
            assert "n/a" not in row, row
    assert {row[2] for row in body if row[0] == "restart_storm"} == {"first add -> returned", "per restart"}
    assert "## stop_reverse scaling" in report
    assert "FAIL" not in report
    for line in ("machine:", "Python 3.", "gevent ", "greenlet ", "trio ", "anyio ", "date: "):
        assert line in report


def test_stop_reverse_scaling_table_and_restart_storm_at_the_smallest_n(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(RUN), "--n", "10,100", "--only", "stop_reverse,restart_storm,greentask"]
    cmd += ["--repeats", "1", "--jobs", "2", "--timeout", "60", "--output", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]

    report = output.read_text(encoding="utf-8")
    assert "FAIL" not in report
    body = _table_rows(report)[2:]
    assert [(row[0], row[1]) for row in body if row[2] != "per restart"] == [
        ("stop_reverse", "10"),
        ("stop_reverse", "10"),
        ("stop_reverse", "100"),
        ("stop_reverse", "100"),
        ("restart_storm", "10"),
    ]
    scaling = _table_rows(report, "## stop_reverse scaling")
    assert scaling[0] == ["stop_reverse", "raw gevent", "greentask"]
    assert scaling[2][0] == "t(100) / t(10)"
    for cell in scaling[2][1:]:
        assert cell.endswith(("(linear)", "(superlinear)")), scaling
    assert "(needs forced_stop" in report
