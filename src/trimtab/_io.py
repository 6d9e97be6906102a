"""Atomic file writes: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from collections.abc import Iterator
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temporary file in the same folder, fsync it, then rename over `path`."""
    return _atomic_write(path, lambda handle: handle.write(data))


def _atomic_write(path: str | os.PathLike, fill) -> Path:
    """`fill(handle)` writes a temporary file in `path`'s folder; it is fsynced, then renamed over
    `path`, so a reader (or a crash) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy `source` to `path` through a temporary file in `path`'s folder (fsync, then rename)."""
    def fill(handle) -> None:
        with open(source, "rb") as src:
            while chunk := src.read(1 << 24):
                handle.write(chunk)

    return _atomic_write(path, fill)


@contextlib.contextmanager
def file_lock(target: str | os.PathLike, *, shared: bool = False) -> Iterator[None]:
    """An advisory lock on `.<name>.lock` beside `target` (a cache entry, file or folder), held for
    the `with` block: exclusive for writers, `shared=True` for readers. Two trimtab processes that
    share a cache folder then never read an entry while the other is writing it. A no-op where
    fcntl does not exist (Windows): writes stay atomic, only duplicate work becomes possible."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
