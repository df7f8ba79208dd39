"""User-facing error types: one per kind of user mistake.

Every message names the key, file or row at fault and says what would be valid. The CLI prints the message as one
paragraph without a traceback and exits with status 1 (see :func:`runner.cli.main`).
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base class of every error caused by the user's input (not by a bug in the runner)."""

    kind = "Error"

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)

    def paragraph(self) -> str:
        """The message as one paragraph: ``<kind>: <message>`` followed by each listed problem."""
        text = " ".join(str(self).split())
        if self.problems:
            text += " " + " ".join(f"({i}) {' '.join(p.split())}" for i, p in enumerate(self.problems, 1))
        return f"{self.kind}: {text}"


class ConfigError(RunnerError):
    """A config key is unknown, has the wrong type, is missing, or contradicts another key."""

    kind = "Config error"


class DataError(RunnerError):
    """A data file or row is missing, empty, malformed or unusable."""

    kind = "Data error"


class ModelError(RunnerError):
    """A model directory, tokenizer or model config cannot be used as asked."""

    kind = "Model error"


class RunDirError(RunnerError):
    """The run directory cannot be written, or holds results that a new run would overwrite."""

    kind = "Run dir error"


class HardwareError(RunnerError):
    """The requested hardware is not available (no GPU visible, bad launcher settings...)."""

    kind = "Hardware error"


class PlanError(RunnerError):
    """The recipe's plan found problems (each listed with its own kind); nothing was run."""

    kind = "Plan error"


class TrainingError(RunnerError):
    """Training stopped on a numerical problem (NaN or infinite loss)."""

    kind = "Training error"
