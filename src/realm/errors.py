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


def check_choices(obj, **choices: tuple) -> None:
    """Raise ``ValueError`` naming the first field of ``obj`` whose value is not one of its choices
    (config dataclasses' ``__post_init__``: ``check_choices(self, mode=("a", "b"))``)."""
    for name, allowed in choices.items():
        value = getattr(obj, name)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
