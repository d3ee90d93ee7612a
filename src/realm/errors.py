"""One exception type for bad user input: it names the file and the problem in one line.

The CLI catches :class:`RealmInputError` and prints ``error: <file>: <problem>`` with exit
code 2 instead of a traceback; library users can catch it the same way.
"""

from __future__ import annotations

from pathlib import Path


class RealmInputError(ValueError):
    """Bad input: a missing, unreadable, empty or inconsistent file."""

    def __init__(self, source: str | Path | None, problem: str):
        self.source = str(source) if source is not None else None
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)
