"""Bench-only helpers shared by the scripts in bench/."""

from __future__ import annotations

from pathlib import Path


def write_marked_block(path: Path, name: str, lines: list[str], title: str = "") -> None:
    """Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in `path` with
    `lines`, keeping everything outside the markers (sections other benches or people wrote).
    Where the markers are missing the block is appended (after `title` if the file is new).
    The file is read and rewritten at once (atomically), so concurrent writers lose nothing
    unless they write within the same instant."""
    from trimtab._io import atomic_write_text

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = "\n".join([start, *lines, end])
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if found_start and found_end:
        text = head + block + tail
    elif text.strip():
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = (f"{title}\n\n" if title else "") + block + "\n"
    atomic_write_text(path, text)


def package_version(name: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
