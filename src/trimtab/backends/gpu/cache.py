"""The on-disk engine cache: one folder per (artifact sha256, device name, input shapes, torch
and triton versions, plan format), holding the lowered plan (`plan.json` + `constants.pt`).

A hit skips parsing, constant folding and fusion; compiling the cached plan (moving weights to the
device, making kernels, warm-up, CUDA graph capture) is all that is left. Entries are written
atomically (`trimtab._io`), so a crash never leaves a half entry that a later build would trust;
an entry that cannot be read is rebuilt and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path

import torch

from trimtab._paths import cache_root
from trimtab.backends.gpu.plan import FORMAT, Plan

log = logging.getLogger(__name__)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def cache_key(artifact_sha256: str, device: torch.device, shapes: dict[str, tuple[int, ...]], fusion: bool) -> dict:
    return {
        "artifact_sha256": artifact_sha256,
        "device": device_name(device),
        "profile": {name: list(shape) for name, shape in sorted(shapes.items())},
        "torch": torch.__version__,
        "triton": _version("triton"),
        "plan_format": FORMAT,
        "fusion": fusion,
    }


def entry_folder(cache_dir: Path | None, key: dict) -> Path:
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "gpu-engines"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return root / digest[:24]


def load(folder: Path) -> Plan | None:
    from trimtab._io import file_lock

    if not folder.is_dir():
        return None
    try:
        with file_lock(folder / "plan", shared=True):  # the lock file lives inside the entry
            return Plan.load(folder)
    except Exception as exc:  # a damaged entry is rebuilt, never trusted
        log.warning("ignoring unreadable gpu engine cache entry %s: %s", folder, exc)
        return None


def store(folder: Path, plan: Plan, key: dict) -> None:
    from trimtab._io import atomic_write_json

    from trimtab._io import file_lock

    with file_lock(folder / "plan"):  # readers never see key.json of one plan beside another's files
        atomic_write_json(folder / "key.json", key)
        plan.save(folder)
