"""Transforms turn one raw item (a PIL image, a line of text, a dict of arrays) into model inputs.

A transform is any callable `raw -> dict[str, np.ndarray]` (arrays without a batch axis). Two
optional members matter to Dataset:

    describe() -> str         its identity for Dataset.fingerprint(): every setting that changes
                              the arrays it produces must appear in it
    pad_values: dict[str,int] value used to pad each variable-length input when batching (default 0)

Image preprocessing must match what the model was trained with, or INT8 calibration measures the
wrong distribution: EfficientNet-Lite wants (x - 127) / 128 on 0..255 pixels, not ImageNet
mean/std. The presets name the known recipes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import FunctionType, MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from trimtab.data.images import to_channels

logger = logging.getLogger(__name__)

Transform = Callable[[Any], dict[str, np.ndarray]]


class Layout(StrEnum):
    """Batch layout of an image input (a sample drops the N: CHW or HWC)."""

    NCHW = "nchw"
    NHWC = "nhwc"


class Interpolation(StrEnum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


_PIL_RESAMPLE = {
    Interpolation.NEAREST: Image.Resampling.NEAREST,
    Interpolation.BILINEAR: Image.Resampling.BILINEAR,
    Interpolation.BICUBIC: Image.Resampling.BICUBIC,
    Interpolation.LANCZOS: Image.Resampling.LANCZOS,
}
_FLOAT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> {input_name: array}: resize, centre crop, channels, normalise, layout.

    Steps: convert to RGB/L; resize so the shorter side is `resize` (skipped when None); cut the
    centre `crop` x `crop` square (an image smaller than the crop is first scaled up to it); then
    y = (x * scale - mean) / std per channel on 0..255 pixel values x; then CHW or HWC.
    `mean`/`std` hold one value (all channels) or one per channel.
    """

    input_name: str = "input"
    resize: int | None = 256
    crop: int | None = 224
    channels: int = 3
    layout: Layout = Layout.NCHW
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: Interpolation = Interpolation.BILINEAR
    dtype: str = "float32"

    def __post_init__(self) -> None:
        # Coerce CLI-friendly spellings (lists, "NHWC") to the canonical types, then validate.
        object.__setattr__(self, "layout", Layout(str(self.layout).lower()))
        object.__setattr__(self, "interpolation", Interpolation(str(self.interpolation).lower()))
        object.__setattr__(self, "mean", _float_tuple(self.mean))
        object.__setattr__(self, "std", _float_tuple(self.std))
        if not self.input_name:
            raise ValueError("input_name must name the model input, e.g. 'input'")
        for size_name in ("resize", "crop"):
            size = getattr(self, size_name)
            if size is not None and size < 1:
                raise ValueError(f"{size_name} must be a positive number of pixels or None, got {size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 3 (RGB) or 1 (grayscale), got {self.channels}")
        for stat_name in ("mean", "std"):
            if len(getattr(self, stat_name)) not in (1, self.channels):
                raise ValueError(
                    f"{stat_name} needs 1 or {self.channels} values, got {getattr(self, stat_name)}"
                )
        if any(s == 0 for s in self.std):
            raise ValueError(f"std values must be non-zero, got {self.std}")
        if self.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {_FLOAT_DTYPES}, got {self.dtype!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ImageTransform:
        """A named recipe (see PRESETS), with fields replaced by `overrides` (e.g. input_name)."""
        if name not in PRESETS:
            raise ValueError(f"unknown image preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def __call__(self, image: Image.Image | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"ImageTransform expects a PIL image, got {type(image).__name__}")
        image = to_channels(image, self.channels)
        image = self._resize_and_crop(image)
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        values = (pixels * np.float32(self.scale) - mean) / std
        if self.layout == Layout.NCHW:
            values = values.transpose(2, 0, 1)
        return {self.input_name: np.ascontiguousarray(values, dtype=self.dtype)}

    def _resize_and_crop(self, image: Image.Image) -> Image.Image:
        resample = _PIL_RESAMPLE[self.interpolation]
        if self.resize is not None:
            image = _resize_shorter_side(image, self.resize, resample)
        if self.crop is None:
            return image
        if min(image.size) < self.crop:
            image = _resize_shorter_side(image, self.crop, resample)
        width, height = image.size
        left = int(round((width - self.crop) / 2))
        top = int(round((height - self.crop) / 2))
        return image.crop((left, top, left + self.crop, top + self.crop))

    def describe(self) -> str:
        """Every field, so any change to the preprocessing changes Dataset.fingerprint()."""
        return _describe_fields(self)


def _resize_shorter_side(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    width, height = image.size
    if min(width, height) == size:
        return image
    if width <= height:
        new_size = (size, max(1, int(size * height / width)))
    else:
        new_size = (max(1, int(size * width / height)), size)
    return image.resize(new_size, resample)


def _float_tuple(values: float | Sequence[float]) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        return (float(values),)
    return tuple(float(v) for v in values)


def _describe_fields(obj: Any) -> str:
    parts = []
    for f in dataclasses.fields(obj):
        if f.repr:
            value = getattr(obj, f.name)
            parts.append(f"{f.name}={str(value) if isinstance(value, StrEnum) else repr(value)}")
    return f"{type(obj).__name__}({', '.join(parts)})"


PRESETS: Mapping[str, ImageTransform] = MappingProxyType(
    {
        # torchvision's ImageNet recipe: bilinear resize 256, crop 224, mean/std on 0..1.
        "imagenet": ImageTransform(),
        # EfficientNet-Lite (TF reference): crop 224 of a 256-equivalent, bicubic, (x - 127) / 128.
        "effnet-lite": ImageTransform(
            scale=1.0, mean=(127.0,), std=(128.0,), interpolation=Interpolation.BICUBIC
        ),
        # Fashion-MNIST: 28x28 grayscale, x / 255 (already 28x28, so resize/crop are no-ops).
        "fashion-mnist": ImageTransform(resize=28, crop=28, channels=1, mean=(0.0,), std=(1.0,)),
    }
)


def transform_from_options(
    preset: str | None = None,
    *,
    input_name: str | None = None,
    size: int | None = None,
    resize: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
    layout: str | None = None,
) -> ImageTransform:
    """Build an ImageTransform from CLI options: a preset (default "imagenet") with overrides.

    `size` is the crop; without `resize`, the preset's resize/crop ratio is kept (224 -> 256
    becomes 160 -> 183) so the crop covers the same share of the image.
    """
    base = ImageTransform.preset(preset or "imagenet")
    changes: dict[str, Any] = {}
    if size is not None:
        changes["crop"] = size
        if resize is None and base.resize and base.crop:
            changes["resize"] = int(round(size * base.resize / base.crop))
    options = {"input_name": input_name, "resize": resize, "mean": mean, "std": std,
               "channels": channels, "layout": layout}
    changes.update({key: value for key, value in options.items() if value is not None})
    if channels is not None and channels != base.channels:
        # A preset's per-channel statistics cannot apply to another channel count.
        changes.setdefault("mean", base.mean if len(base.mean) == 1 else (float(np.mean(base.mean)),))
        changes.setdefault("std", base.std if len(base.std) == 1 else (float(np.mean(base.std)),))
    return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class NpzTransform:
    """Identity for .npz rows: the arrays already are the model inputs."""

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(arrays, Mapping):
            raise TypeError(f"NpzTransform expects a dict of arrays, got {type(arrays).__name__}")
        return {name: np.asarray(value) for name, value in arrays.items()}

    def describe(self) -> str:
        return "NpzTransform()"


_TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TextTransform:
    """A line of text -> token ids, attention mask and token type ids (int64, no padding).

    `tokenizer` is a `tokenizers.Tokenizer` or any object whose `encode(text)` returns either an
    object with `.ids`, `.attention_mask`, `.type_ids` or a mapping with `input_ids`, ... .
    `input_names` names the model inputs for (ids, mask, type ids) in that order; give fewer
    names for a model with fewer inputs. Sequences are cut to `max_length` tokens. Padding is
    left to batching (to the longest sample of each batch), with `pad_id` for the ids and 0 for
    the mask and type ids.
    """

    tokenizer: Any
    max_length: int = 128
    input_names: tuple[str, ...] = _TEXT_INPUT_NAMES
    pad_id: int = 0
    _encoder: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_names", tuple(self.input_names))
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if not 1 <= len(self.input_names) <= 3 or len(set(self.input_names)) != len(self.input_names):
            raise ValueError(
                f"input_names needs 1 to 3 distinct names for (ids, mask, type ids), got {self.input_names}"
            )
        if not callable(getattr(self.tokenizer, "encode", None)):
            raise TypeError(
                f"tokenizer must have an encode(text) method, got {type(self.tokenizer).__name__}"
            )
        object.__setattr__(self, "_encoder", _unpadded_copy(self.tokenizer, self.max_length))

    def __call__(self, text: str) -> dict[str, np.ndarray]:
        if not isinstance(text, str):
            raise TypeError(f"TextTransform expects a str, got {type(text).__name__}")
        ids, mask, type_ids = _encode(self._encoder, text)
        arrays = [np.asarray(seq[: self.max_length], dtype=np.int64) for seq in (ids, mask, type_ids)]
        return dict(zip(self.input_names, arrays, strict=False))  # fewer names: fewer inputs

    @property
    def pad_values(self) -> dict[str, int]:
        return {name: (self.pad_id if i == 0 else 0) for i, name in enumerate(self.input_names)}

    def describe(self) -> str:
        return (
            f"TextTransform(tokenizer={tokenizer_identity(self.tokenizer)}, max_length={self.max_length}, "
            f"input_names={self.input_names!r}, pad_id={self.pad_id})"
        )


def _unpadded_copy(tokenizer: Any, max_length: int) -> Any:
    """A private copy of a `tokenizers.Tokenizer` with truncation on and padding off.

    Its own truncation keeps the closing special token ([SEP]) that a plain slice would cut; its
    padding (some tokenizer.json files pad to a fixed length) would defeat per-batch padding.
    The caller's tokenizer is left untouched. Other tokenizers are used as they are.
    """
    if not all(hasattr(tokenizer, attr) for attr in ("to_str", "no_padding", "enable_truncation")):
        return tokenizer
    copy = type(tokenizer).from_str(tokenizer.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length)
    return copy


def _encode(tokenizer: Any, text: str) -> tuple[Sequence[int], Sequence[int], Sequence[int]]:
    encoded = tokenizer.encode(text)
    if isinstance(encoded, Mapping):
        ids = encoded["input_ids"]
        mask = encoded.get("attention_mask")
        type_ids = encoded.get("token_type_ids")
    else:
        ids = encoded.ids
        mask = getattr(encoded, "attention_mask", None)
        type_ids = getattr(encoded, "type_ids", None)
    ids = list(ids)
    mask = list(mask) if mask is not None else [1] * len(ids)
    type_ids = list(type_ids) if type_ids is not None else [0] * len(ids)
    return ids, mask, type_ids


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full JSON when it has one (vocabulary and rules included)."""
    to_str = getattr(tokenizer, "to_str", None)
    if callable(to_str):
        return "sha256:" + hashlib.sha256(to_str().encode("utf-8")).hexdigest()
    describe = getattr(tokenizer, "describe", None)
    if callable(describe):
        return str(describe())
    logger.warning(
        "tokenizer %s has neither to_str() nor describe(); Dataset.fingerprint() cannot see "
        "changes to its vocabulary", type(tokenizer).__name__,
    )
    return f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"


def transform_identity(transform: Any) -> str:
    """A string that changes whenever the transform would produce different arrays.

    describe() when the transform has one; the repr of a dataclass; for a plain function, its
    qualified name and a hash of its bytecode and constants (values it closes over are not seen).
    """
    if transform is None:
        return "none"
    describe = getattr(transform, "describe", None)
    if callable(describe):
        return f"{type(transform).__qualname__}:{describe()}"
    if dataclasses.is_dataclass(transform):
        return repr(transform)
    if isinstance(transform, FunctionType):
        code = transform.__code__
        digest = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()
        return f"function:{transform.__module__}.{transform.__qualname__}:{digest}"
    logger.warning(
        "transform %s has no describe(); Dataset.fingerprint() cannot see changes to its settings",
        type(transform).__name__,
    )
    return f"{type(transform).__module__}.{type(transform).__qualname__}"
