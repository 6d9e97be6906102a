"""Natural photos that ship inside installed Python packages, read straight from their files.

No fetchers are called (scikit-image's `data.<name>()` may try to download; sklearn's loader
imports all of sklearn): each file is found with `importlib.util.find_spec` and opened with PIL.
Files that a package version does not ship are skipped.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np

from trimtab.errors import InvalidDataError

log = logging.getLogger(__name__)

# (package, folder inside the package, file). Chosen as photos of ImageNet-like scenes and
# objects; icons, charts, microscopy and synthetic test patterns are left out.
PHOTO_FILES = (
    ("skimage", "data", "astronaut.png"),
    ("skimage", "data", "camera.png"),
    ("skimage", "data", "chelsea.png"),
    ("skimage", "data", "coffee.png"),
    ("skimage", "data", "coins.png"),
    ("skimage", "data", "hubble_deep_field.jpg"),
    ("skimage", "data", "motorcycle_left.png"),
    ("skimage", "data", "rocket.jpg"),
    ("sklearn", "datasets/images", "china.jpg"),
    ("sklearn", "datasets/images", "flower.jpg"),
    ("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg"),
)
MIN_PHOTOS = 3
# A random view keeps 40-100% of the shorter side, aspect 3:4..4:3, flipped half the time.
MIN_SIDE_FRACTION, MAX_ASPECT = 0.4, 4 / 3


@functools.lru_cache(maxsize=1)
def bundled_photos() -> tuple[tuple[str, object], ...]:
    """(name, RGB PIL image) for each bundled photo found, in PHOTO_FILES order."""
    from PIL import Image

    photos = []
    for package, folder, filename in PHOTO_FILES:
        path = _package_file(package, folder, filename)
        if path is None:
            log.debug("photo %s/%s/%s not installed; skipped", package, folder, filename)
            continue
        with Image.open(path) as image:
            photos.append((f"{package}:{filename}", image.convert("RGB")))
    if len(photos) < MIN_PHOTOS:
        raise InvalidDataError(
            f"found {len(photos)} bundled calibration photos; need at least {MIN_PHOTOS}",
            hint="pip install scikit-image scikit-learn matplotlib  (their sample photos are used)",
        )
    return tuple(photos)


def _package_file(package: str, folder: str, filename: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / folder / filename
    return path if path.is_file() else None


def random_view(image, rng: np.random.Generator):
    """A random crop (40-100% of the shorter side, aspect 3:4..4:3) flipped with p=0.5.
    Returns (PIL image, short description for Sample.source)."""
    from PIL import Image

    width, height = image.size
    side = min(width, height) * rng.uniform(MIN_SIDE_FRACTION, 1.0)
    aspect = np.exp(rng.uniform(-np.log(MAX_ASPECT), np.log(MAX_ASPECT)))
    crop_w = int(min(width, round(side * np.sqrt(aspect))))
    crop_h = int(min(height, round(side / np.sqrt(aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    view = image.crop((left, top, left + crop_w, top + crop_h))
    flipped = bool(rng.random() < 0.5)
    if flipped:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return view, f"crop({left},{top},{crop_w}x{crop_h}){'+flip' if flipped else ''}"
