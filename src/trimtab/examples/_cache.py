"""Build an example's model once, keep it in the cache, and notice when the cached file is bad.

Layout: `cache_root()/examples/<name>/model.onnx` plus `model.json` (recipe version, size,
sha256). The metadata is written after the model, so a crash between the two leaves a model
without metadata, which counts as missing and is rebuilt. A lock file serialises builds of the
same example across processes (two test workers, two shells), so the work is done once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from trimtab._io import atomic_write_json
from trimtab._paths import cache_root

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
META_FILE = "model.json"

# (path, size, mtime_ns) of files already hashed in this process: later calls are instant.
_verified: set[tuple[str, int, int]] = set()


def example_dir(name: str) -> Path:
    path = cache_root() / "examples" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_model(name: str, recipe: str, build: Callable[[Path], None]) -> Path:
    """Return the cached ONNX model of example `name`, calling `build(path)` when it is missing,
    corrupt, or was built by another `recipe` version. `build` must write `path` atomically."""
    folder = example_dir(name)
    model = folder / MODEL_FILE
    if _is_valid(model, recipe):
        return model
    with _build_lock(folder):
        if _is_valid(model, recipe):  # another process built it while we waited
            return model
        (folder / META_FILE).unlink(missing_ok=True)
        log.info("building example '%s' (first use; cached under %s)", name, folder)
        started = time.perf_counter()
        build(model)
        _write_meta(model, recipe)
        log.info("built example '%s' in %.1f s", name, time.perf_counter() - started)
    return model


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_meta(model: Path, recipe: str) -> None:
    stat = model.stat()
    atomic_write_json(
        model.with_name(META_FILE),
        {"recipe": recipe, "bytes": stat.st_size, "sha256": file_sha256(model)},
    )
    _verified.add((str(model), stat.st_size, stat.st_mtime_ns))


def _is_valid(model: Path, recipe: str) -> bool:
    """True when the model exists, was built by `recipe`, and its bytes match the recorded hash."""
    try:
        stat = model.stat()
        meta = json.loads(model.with_name(META_FILE).read_text())
    except (OSError, ValueError):
        return False
    key = (str(model), stat.st_size, stat.st_mtime_ns)
    if meta.get("recipe") != recipe or meta.get("bytes") != stat.st_size:
        return False
    if key in _verified:
        return True
    if meta.get("sha256") != file_sha256(model):
        log.warning("cached %s does not match its recorded sha256; rebuilding it", model)
        return False
    _verified.add(key)
    return True


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on `folder/.lock` (a no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # Windows: builds may then run twice, which is wasteful but safe
        yield
        return
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
