"""trimtab's exceptions. Every error a user can cause is one of these, with a message that says
what was asked, what was found, and how to fix it.

    TrimtabError
     +-- InvalidModelError        the ONNX file / module / example cannot be used
     +-- InvalidDataError         a data folder or file is empty, unreadable or the wrong shape
     +-- BackendUnavailableError  a backend's optional dependencies or device are missing
     +-- CalibrationError         calibration cannot produce ranges (NaN/Inf, stale cache, ...)
     +-- BudgetNotMetError        no candidate satisfies the accuracy budget (when that is an error)
"""

from __future__ import annotations


class TrimtabError(Exception):
    """Base class. `hint` is the suggested fix, shown by the CLI on its own line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class InvalidModelError(TrimtabError):
    """The model cannot be loaded, checked or prepared."""


class InvalidDataError(TrimtabError):
    """Data is missing, empty, undecodable, or does not fit the model's inputs."""


class BackendUnavailableError(TrimtabError):
    """A backend was requested whose dependencies or device are not present."""


class CalibrationError(TrimtabError):
    """Calibration could not produce trustworthy ranges."""


class BudgetNotMetError(TrimtabError):
    """No candidate meets the accuracy budget."""
