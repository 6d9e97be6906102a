"""trimtab: choose the fastest numeric precision whose accuracy is still acceptable.

`import trimtab` is light: torch, onnxruntime and the stage modules load only when an API
function that needs them is first used (PEP 562 lazy attributes).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from trimtab.errors import (
    BackendUnavailableError,
    BudgetNotMetError,
    CalibrationError,
    InvalidDataError,
    InvalidModelError,
    TrimtabError,
)
from trimtab.options import CalibrationMethod, Int8Flavour, Precision, Target, Task

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Dataset": "trimtab.data",
    "Model": "trimtab.load",
    "PrecisionPlan": "trimtab.build.plan",
    "Summary": "trimtab.report.summary",
    "TuneConfig": "trimtab.pipeline",
    "build_bf16": "trimtab.build",
    "build_fp16": "trimtab.build",
    "build_fp32": "trimtab.build",
    "build_int8": "trimtab.build",
    "calibrate": "trimtab.calibrate",
    "get_example": "trimtab.examples",
    "list_examples": "trimtab.examples",
    "load_model": "trimtab.load",
    "tune": "trimtab.pipeline",
}

__all__ = sorted(
    [
        "BackendUnavailableError",
        "BudgetNotMetError",
        "CalibrationError",
        "CalibrationMethod",
        "Int8Flavour",
        "InvalidDataError",
        "InvalidModelError",
        "Precision",
        "Target",
        "Task",
        "TrimtabError",
        "__version__",
        *_LAZY,
    ]
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trimtab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
