"""Where trimtab keeps caches (examples, calibration): $TRIMTAB_CACHE or ~/.cache/trimtab."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("TRIMTAB_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "trimtab"
    path.mkdir(parents=True, exist_ok=True)
    return path
