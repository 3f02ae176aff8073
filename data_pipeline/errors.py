"""Errors that point at the recipe file, line and field a user must fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Problem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field or '<recipe>'}: {self.message}"


@dataclass
class RecipeError(Exception):
    """One or more problems in a recipe. `str()` lists them, one per line."""

    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def one(cls, file: str | Path, line: int | None, field_path: str, message: str) -> "RecipeError":
        return cls([Problem(str(file), line, field_path, message)])

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class PipelineError(RuntimeError):
    """A stage failed to run; the message says which stage and why."""


def run_command(fn, *args, **kwargs) -> int:
    """Run a CLI command: 2 for a bad recipe (every problem on stderr), 1 for a
    failed run, else the command's own status (0 when it returns None)."""
    import sys

    try:
        status = fn(*args, **kwargs)
    except RecipeError as e:
        print(str(e), file=sys.stderr)
        return 2
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0 if status is None else int(status)
