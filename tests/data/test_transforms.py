"""Image and text transforms: preprocessing maths, presets, describe(), tokenizer wrapping."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from trimtab.data import PRESETS, ImageTransform, NpzTransform, TextTransform, transform_from_options
from trimtab.data.transforms import transform_identity


def constant_image(value: int, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, (value,) * len(mode) if mode != "L" else value)


def test_effnet_lite_normalisation_is_x_minus_127_over_128() -> None:
    out = ImageTransform.preset("effnet-lite", resize=None, crop=None)(constant_image(255))["input"]
    np.testing.assert_allclose(out, (255 - 127) / 128)
    assert out.dtype == np.float32 and out.shape == (3, 8, 8)


def test_imagenet_normalisation_per_channel() -> None:
    image = Image.new("RGB", (4, 4), (255, 0, 128))
    out = ImageTransform.preset("imagenet", resize=None, crop=None)(image)["input"]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (np.array([255, 0, 128]) / 255 - mean) / std
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-5)


def test_resize_shorter_side_then_centre_crop() -> None:
    # 40 wide x 20 high, left half black, right half white; resize 10 -> 20x10, crop 10 -> the
    # middle, which holds both halves.
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 20:] = 255
    out = ImageTransform(resize=10, crop=10, channels=1, mean=(0.0,), std=(1.0,),
                         interpolation="nearest")(Image.fromarray(pixels))["input"]
    assert out.shape == (1, 10, 10)
    assert out[0, 0, 0] == 0.0 and out[0, 0, -1] == 1.0


def test_small_image_is_scaled_up_to_the_crop() -> None:
    out = ImageTransform(resize=None, crop=16)(constant_image(10, (5, 7)))["input"]
    assert out.shape == (3, 16, 16)


def test_nhwc_layout_and_grayscale_input_to_rgb() -> None:
    out = ImageTransform(resize=None, crop=None, layout="NHWC", mean=(0.0,), std=(1.0,))(
        constant_image(50, (6, 4), "L")
    )["input"]
    assert out.shape == (4, 6, 3)
    np.testing.assert_allclose(out, 50 / 255, rtol=1e-6)  # gray replicated into three channels


def test_fashion_mnist_preset() -> None:
    out = ImageTransform.preset("fashion-mnist")(constant_image(255, (28, 28), "L"))["input"]
    assert out.shape == (1, 28, 28)
    np.testing.assert_allclose(out, 1.0)


@pytest.mark.parametrize(
    "bad",
    [{"channels": 2}, {"resize": 0}, {"mean": (1.0, 2.0)}, {"std": (0.0,)}, {"layout": "nchwx"},
     {"dtype": "int8"}, {"input_name": ""}],
)
def test_invalid_settings_raise_value_error(bad: dict) -> None:
    with pytest.raises(ValueError):
        ImageTransform(**bad)


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="effnet-lite"):
        ImageTransform.preset("resnet")


@pytest.mark.parametrize(
    "change",
    [{"input_name": "x"}, {"resize": 255}, {"crop": 223}, {"channels": 1, "mean": (0.5,), "std": (0.5,)},
     {"layout": "nhwc"}, {"scale": 1.0}, {"mean": (0.5, 0.5, 0.5)}, {"std": (0.2, 0.2, 0.2)},
     {"interpolation": "bicubic"}, {"dtype": "float16"}],
)
def test_describe_changes_with_every_field(change: dict) -> None:
    base = ImageTransform()
    assert dataclasses.replace(base, **change).describe() != base.describe()
    assert ImageTransform().describe() == base.describe()


def test_presets_differ_where_the_recipes_differ() -> None:
    assert PRESETS["effnet-lite"].mean == (127.0,) and PRESETS["effnet-lite"].std == (128.0,)
    assert (PRESETS["effnet-lite"].resize, PRESETS["effnet-lite"].crop) == (256, 224)
    assert PRESETS["fashion-mnist"].channels == 1
    assert len({p.describe() for p in PRESETS.values()}) == len(PRESETS)


def test_transform_from_options_keeps_the_preset_crop_ratio() -> None:
    t = transform_from_options("effnet-lite", size=160, input_name="images")
    assert (t.resize, t.crop, t.input_name, t.mean) == (183, 160, "images", (127.0,))
    t = transform_from_options(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], layout="nhwc")
    assert t.mean == (0.5, 0.5, 0.5) and t.layout == "nhwc" and t.crop == 224
    gray = transform_from_options("imagenet", channels=1)
    assert gray.channels == 1 and len(gray.mean) == 1


def test_npz_transform_is_identity() -> None:
    arrays = {"a": np.arange(3)}
    out = NpzTransform()(arrays)
    np.testing.assert_array_equal(out["a"], arrays["a"])


def word_tokenizer(pad_to: int | None = None) -> Tokenizer:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "c": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    if pad_to:
        tok.enable_padding(length=pad_to)
    return tok


def test_text_transform_encodes_int64_and_truncates_keeping_sep() -> None:
    tok = word_tokenizer()
    t = TextTransform(tok, max_length=4)
    out = t("a b c a b")
    assert out["input_ids"].tolist() == [2, 4, 5, 3]  # [CLS] a b [SEP]
    assert out["attention_mask"].tolist() == [1, 1, 1, 1]
    assert out["token_type_ids"].dtype == np.int64
    assert tok.truncation is None  # the caller's tokenizer is not changed


def test_text_transform_ignores_the_tokenizers_own_padding() -> None:
    out = TextTransform(word_tokenizer(pad_to=16), max_length=32)("a b")
    assert out["input_ids"].tolist() == [2, 4, 5, 3]


def test_text_transform_with_fewer_inputs_and_a_plain_tokenizer() -> None:
    class Plain:
        def encode(self, text: str) -> dict:
            return {"input_ids": [ord(ch) for ch in text]}

        def describe(self) -> str:
            return "plain-v1"

    t = TextTransform(Plain(), max_length=3, input_names=("ids", "mask"))
    out = t("hello")
    assert sorted(out) == ["ids", "mask"]
    assert out["ids"].tolist() == [104, 101, 108] and out["mask"].tolist() == [1, 1, 1]
    assert "plain-v1" in t.describe()


def test_text_transform_identity_follows_the_vocabulary() -> None:
    a = TextTransform(word_tokenizer())
    b = TextTransform(word_tokenizer())
    other = word_tokenizer()
    other.add_tokens(["zebra"])
    assert transform_identity(a) == transform_identity(b)
    assert transform_identity(TextTransform(other)) != transform_identity(a)
    assert transform_identity(TextTransform(word_tokenizer(), max_length=64)) != transform_identity(a)


def test_function_identity_follows_its_code() -> None:
    def one(x):
        return {"x": x + 1}

    def two(x):
        return {"x": x + 2}

    assert transform_identity(one) != transform_identity(two)
    assert transform_identity(one) == transform_identity(one)
