"""One benchmark cell in a fresh process; run by ``run.py``, not by hand.

Usage: ``python _cell.py FRAMEWORK WORKLOAD N``. Imports only ``bench_FRAMEWORK``, runs
the workload once small (imports, hub or loop creation and first-call caches stay out
of the figures), then once at ``N``, and prints the outcome as one JSON line.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys

#: Size of the warm-up run (context_churn uses ten times as many children).
WARMUP_N = 200


def main(argv: list[str]) -> int:
    """Run one cell; return the exit status."""
    framework, workload, n = argv[0], argv[1], int(argv[2])
    module = importlib.import_module(f"bench_{framework}")
    fn = getattr(module, workload)
    warmup = fn(min(n, WARMUP_N * (10 if workload == "context_churn" else 1)))
    if warmup["fails"]:
        print(json.dumps({"metrics": {}, "fails": [f"warm-up: {f}" for f in warmup["fails"]]}))
        return 0
    gc.collect()
    print(json.dumps(fn(n)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
