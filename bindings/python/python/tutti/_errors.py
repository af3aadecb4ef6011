"""The exceptions tutti raises. The native module raises these classes by name."""

from typing import Optional

__all__ = ["TuttiError", "ConfigError", "TaskError"]


class TuttiError(Exception):
    """The engine could not do what was asked: a config it cannot build, a server it cannot
    reach, a backend that cannot start on this machine, a run that stopped on an error."""


class ConfigError(TuttiError, ValueError):
    """The config is invalid. The message names the key, and the file, line and column where
    the config came from a file."""


class TaskError(TuttiError, ValueError):
    """A task was refused before anything ran. The message is the command line's: the input,
    the row (1-based) and the column at fault.

    Attributes:
        input: names the input (``"tasks"`` for a table passed to ``Engine.run``).
        row: the 1-based row of the task at fault, when the problem is with one task.
        line: the 1-based line, for a JSON Lines input.
        column: the column (or field) at fault, when there is one.
    """

    def __init__(
        self,
        message: str,
        input: Optional[str] = None,
        row: Optional[int] = None,
        line: Optional[int] = None,
        column: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.input = input
        self.row = row
        self.line = line
        self.column = column
