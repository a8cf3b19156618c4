"""README.md's Python examples run, and it documents the two entry points.

Every fenced ```` ```python ```` block (also one indented inside a list item) is run
as its own program in a subprocess, from the repository root, and must exit 0 within
60 seconds: a block that is a whole program must terminate by itself. A block can be
left out only by putting ``<!-- not-run: reason -->`` right before its fence.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TIMEOUT = 60

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>(?:(?!-->).)+?)\s*-->\s*\Z", re.S)


class Block(NamedTuple):
    line: int
    code: str
    skip_reason: str | None


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text``, dedented, with the not-run reason if marked."""
    blocks = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()]
        marker = _NOT_RUN.search(before)
        reason = marker["reason"] if marker is not None else None
        blocks.append(Block(line, textwrap.dedent(match["body"]), reason))
    return blocks


def _readme_blocks() -> list[Block]:
    return python_blocks(README.read_text()) if README.exists() else []


def test_python_blocks_finds_fenced_and_indented_blocks_and_markers() -> None:
    text = textwrap.dedent(
        """\
        # Title

        ```python
        print("one")
        ```

        - item:

          ```python
          print("two")
          ```

        <!-- not-run: needs a database -->
        ```python
        connect()
        ```

        ```sh
        make test
        ```

        <!-- not-run: only this one --> and text
        <!-- a plain comment -->
        ```python
        print("three")
        ```
        """
    )
    assert python_blocks(text) == [
        Block(3, 'print("one")\n', None),
        Block(9, 'print("two")\n', None),
        Block(14, "connect()\n", "needs a database"),
        Block(24, 'print("three")\n', None),
    ]


def test_readme_exists_and_mentions_make_demo_and_make_test() -> None:
    assert README.exists(), "README.md is missing"
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text


@pytest.mark.parametrize("block", _readme_blocks(), ids=lambda block: f"README.md:{block.line}")
def test_readme_python_block_runs(block: Block, tmp_path: Path) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"marked not-run: {block.skip_reason}")
    script = tmp_path / f"readme_block_{block.line}.py"
    script.write_text(block.code)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    try:
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"README.md block at line {block.line} did not finish within {TIMEOUT}s:\n{exc.output}")
    assert result.returncode == 0, (
        f"README.md block at line {block.line} exited with {result.returncode}:\n{result.stdout}"
    )
