"""Fixtures for the data-stage tests: builders for tiny files, made with Pillow in tmp_path.

The builders are fixtures (not an importable helper module) so the tests work under any pytest
import mode, next to other test folders with their own conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write_image(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, mode: str = "RGB") -> Path:
    """A random-noise image of `size` (width, height); noise so every file's bytes differ by seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def _write_corrupt(path: Path) -> Path:
    """Bytes that start like a JPEG but are not one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 4)
    return path


@pytest.fixture
def write_image() -> Callable[..., Path]:
    return _write_image


@pytest.fixture
def write_corrupt() -> Callable[[Path], Path]:
    return _write_corrupt


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "flat"
    for i, name in enumerate(["b.png", "a.jpg", "c.JPEG", "d.bmp"]):
        _write_image(folder / name, seed=i)
    (folder / "notes.txt").write_text("not an image")
    return folder
