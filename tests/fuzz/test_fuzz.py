"""Fuzzing (issue 6) with hypothesis: the ONNX loader, the data loaders and the calibration cache
reader, fed mutated and random bytes. Each target may succeed or raise a TrimtabError; any other
exception is a finding (fixed, and kept below as an @example).

CI runs each target a few seconds, derandomized. A longer run, random seeds until the time is up:

    TRIMTAB_FUZZ_SECONDS=600 .venv/bin/python -m pytest -q tests/fuzz -s
"""

from __future__ import annotations

import functools
import io
import json
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.calibrate.conftest import StandInDataset, conv_relu_matmul, make_model
from tests.conftest import conv_bn_relu_model
from trimtab.calibrate import calibrate
from trimtab.calibrate.cache import HISTOGRAMS_FILE, cache_folder
from trimtab.data import Dataset, ImageTransform
from trimtab.data.images import load_image
from trimtab.errors import TrimtabError
from trimtab.load import load_model

FUZZ_SECONDS = float(os.environ.get("TRIMTAB_FUZZ_SECONDS", "0"))
CI_EXAMPLES = 40
SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


def fuzz(test):
    """CI: `CI_EXAMPLES` derandomized examples. Long mode: fresh random batches until
    TRIMTAB_FUZZ_SECONDS have passed (the count is printed)."""
    if not FUZZ_SECONDS:
        return settings(max_examples=CI_EXAMPLES, derandomize=True, **SETTINGS)(test)
    batch = settings(max_examples=200, derandomize=False, **SETTINGS)(test)

    @functools.wraps(batch)  # pytest sees the fixtures hypothesis leaves in the signature
    def run(*args, **kwargs):
        start, rounds = time.monotonic(), 0
        while time.monotonic() < start + FUZZ_SECONDS:
            batch(*args, **kwargs)
            rounds += 1
        print(f"{test.__name__}: {rounds} batches of up to 200 examples in {time.monotonic() - start:.0f} s")

    return run


@contextlib.contextmanager
def scratch(tmp_path_factory):
    """A folder for one example, removed after it. (`tmp_path_factory.mktemp` keeps every folder and
    lists them all to number the next: quadratic over a long run's hundreds of thousands.)"""
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as folder:
        yield Path(folder)


def mutations(seed: bytes):
    """Byte strings near `seed`: flipped, overwritten, inserted and deleted bytes, truncations."""

    @st.composite
    def mutate(draw):
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 8))):
            kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            if kind == "flip" and data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "set" and data:
                data[at] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif kind == "delete":
                del data[at: at + draw(st.integers(1, 16))]
            elif kind == "truncate":
                del data[at:]
            elif kind == "splice":
                data[at: at + 8] = b"\xff\xff\xff\xff\x0f" + bytes(3)  # a huge varint length
        return bytes(data)

    return mutate() | st.binary(max_size=512)


MODEL_BYTES = conv_bn_relu_model().SerializeToString()


@fuzz
@given(data=mutations(MODEL_BYTES))
@example(data=MODEL_BYTES[:57] + b"\xff\xff\xff\xff\x0f" + MODEL_BYTES[62:])
def test_fuzz_onnx_loader(tmp_path_factory, data):
    with scratch(tmp_path_factory) as folder:
        path = folder / "m.onnx"
        path.write_bytes(data)
        try:
            model = load_model(path)
        except TrimtabError:
            return
        assert len(model.sha256) == 64


def _external_model() -> tuple[bytes, bytes]:
    """The test model saved with its weights in `w.bin` beside it: (graph bytes, data bytes)."""
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        onnx.save(conv_bn_relu_model(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
        return path.read_bytes(), (Path(folder) / "w.bin").read_bytes()


EXTERNAL_GRAPH, EXTERNAL_DATA = _external_model()


@fuzz
@given(graph=mutations(EXTERNAL_GRAPH), data=st.just(EXTERNAL_DATA) | mutations(EXTERNAL_DATA))
def test_fuzz_onnx_external_data_loader(tmp_path_factory, graph, data):
    """A model whose weights sit in a data file beside it: mutated locations, offsets and lengths in
    the graph, a mutated or truncated data file."""
    with scratch(tmp_path_factory) as folder:
        (folder / "m.onnx").write_bytes(graph)
        (folder / "w.bin").write_bytes(data)
        try:
            model = load_model(folder / "m.onnx")
        except TrimtabError:
            return
        assert len(model.sha256) == 64


def _image_bytes(fmt: str, mode: str) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), np.uint8)
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = {"png": _image_bytes("PNG", "RGB"), "jpg": _image_bytes("JPEG", "RGB"),
          "bmp": _image_bytes("BMP", "P"), "webp": _image_bytes("WEBP", "RGB")}


@fuzz
@given(suffix=st.sampled_from(sorted(IMAGES)), data=st.data())
def test_fuzz_image_loader(tmp_path_factory, suffix, data):
    content = data.draw(mutations(IMAGES[suffix]))
    with scratch(tmp_path_factory) as folder:
        _check_image_folder(folder, suffix, content)


def _check_image_folder(folder: Path, suffix: str, content: bytes) -> None:
    (folder / f"x.{suffix}").write_bytes(content)
    try:
        image = load_image(folder / f"x.{suffix}")
    except TrimtabError:
        image = None
    if image is not None:
        assert image.mode in ("RGB", "L")
    try:
        samples = list(Dataset(folder, ImageTransform(resize=8, crop=8)))
    except TrimtabError:
        return
    assert all(np.isfinite(s.inputs["input"]).all() for s in samples)


@fuzz
@given(content=st.binary(max_size=2048) | st.text(max_size=512).map(lambda t: t.encode("utf-8", "surrogatepass")))
@example(content=b"\xff\xfe" + b"a\x00")
@example(content=b"\xff\xfea")  # a UTF-16 BOM on an odd number of bytes
def test_fuzz_text_loader(tmp_path_factory, content):
    with scratch(tmp_path_factory) as folder:
        path = folder / "t.txt"
        path.write_bytes(content)
        try:
            items = [item.raw for item in Dataset(path, lambda raw: {"x": np.zeros(1)})._source]
        except TrimtabError:
            return
        assert items and all(isinstance(item, str) for item in items)


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(12, dtype=np.float32).reshape(4, 3), labels=np.arange(4))
    return buffer.getvalue()


NPZ_BYTES = _npz_bytes()


@fuzz
@given(data=mutations(NPZ_BYTES))
def test_fuzz_npz_loader(tmp_path_factory, data):
    with scratch(tmp_path_factory) as folder:
        path = folder / "d.npz"
        path.write_bytes(data)
        try:
            samples = list(Dataset(path))
        except TrimtabError:
            return
        assert samples


_MODEL = make_model(conv_relu_matmul())
_DATA = StandInDataset({"x": np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)})


_TEMPLATE: dict[str, bytes] = {}


def _fresh_cache(root: Path) -> Path:
    """A calibrated cache entry, the same bytes every time (a fresh .npz's zip timestamps would
    change the seeds hypothesis mutates between examples)."""
    entry = cache_folder(root, _MODEL.sha256, _DATA.fingerprint())
    if not _TEMPLATE:
        calibrate(_MODEL, _DATA, "minmax", cache_dir=root)
        _TEMPLATE.update({p.name: p.read_bytes() for p in entry.iterdir()})
    entry.mkdir(parents=True, exist_ok=True)
    for name, data in _TEMPLATE.items():
        (entry / name).write_bytes(data)
    return entry


def _check_cache_reader(root: Path) -> None:
    try:
        calibration = calibrate(_MODEL, _DATA, "entropy", cache_dir=root)
    except TrimtabError:
        return
    for r in calibration.ranges.values():
        assert np.isfinite([r.amax, r.min, r.max]).all() and r.amax >= 0


@fuzz
@given(data=st.data())
def test_fuzz_cache_reader_bytes(tmp_path_factory, data):
    with scratch(tmp_path_factory) as root:
        _fuzz_cache_bytes(root, data)


def _fuzz_cache_bytes(root: Path, data) -> None:
    entry = _fresh_cache(root)
    target = data.draw(st.sampled_from([HISTOGRAMS_FILE, "ranges-minmax.json"]))
    (entry / target).write_bytes(data.draw(mutations((entry / target).read_bytes())))
    try:
        calibrate(_MODEL, _DATA, "minmax", cache_dir=root)
    except TrimtabError:
        pass
    _check_cache_reader(root)


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@fuzz
@given(data=st.data())
def test_fuzz_cache_reader_arrays(tmp_path_factory, data):
    """Histogram files that unzip and carry the right keys, with hostile values."""
    with scratch(tmp_path_factory) as root:
        _fuzz_cache_arrays(root, data)


def _fuzz_cache_arrays(root: Path, data) -> None:
    entry = _fresh_cache(root)
    with np.load(entry / HISTOGRAMS_FILE, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = data.draw(st.sampled_from(sorted(k for k in arrays if k != "meta_json")))
    original = arrays[key]
    if original.dtype.kind in "fiu" and original.size:
        values = data.draw(st.lists(FLOATS if original.dtype.kind == "f" else st.integers(-(2**40), 2**40),
                                    min_size=1, max_size=original.size))
        flat = original.astype(np.float64 if original.dtype.kind == "f" else np.int64).ravel().copy()
        flat[: len(values)] = values
        arrays[key] = flat.reshape(original.shape).astype(original.dtype) if data.draw(st.booleans()) else flat[: len(values)]
    else:
        arrays[key] = np.array(data.draw(st.text(max_size=20)))
    if data.draw(st.booleans()):
        meta = json.loads(str(arrays["meta_json"]))
        meta["num_samples"] = data.draw(st.integers(-5, 10**12))
        arrays["meta_json"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    (entry / HISTOGRAMS_FILE).write_bytes(buffer.getvalue())
    _check_cache_reader(root)


@pytest.mark.parametrize("key,value", [("mins", 4.0), ("ranges", float("nan")), ("counts", -1), ("totals", -3),
                                       ("channel_maxs", float("inf"))])
def test_finding_hostile_histogram_values_are_a_calibration_error(tmp_path, key, value):
    """Regression for the cache-reader fuzz finding: a histogram file with the right keys and
    min > max (or NaN ranges, negative counts) crashed the range methods with a ValueError, and an
    infinite per-channel max crashed writing the ranges JSON (second long run)."""
    entry = _fresh_cache(tmp_path)
    path = entry / HISTOGRAMS_FILE
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    arrays[key].flat[0] = value
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(TrimtabError, match=HISTOGRAMS_FILE) as info:
        calibrate(_MODEL, _DATA, "entropy", cache_dir=tmp_path)
    assert "inconsistent" in str(info.value) and info.value.hint


# Fuzz finding (npz loader): the headers read as float arrays, np.load then met object data and
# raised a bare ValueError; load_npz now turns every read failure into an InvalidDataError.
NPZ_FINDING = bytes.fromhex(
    '00504b03042d0000000000000021001672dca1ffffffffffffffff05001400782e6e707901001000b000000000000000'
    'b000000000000000934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f726465'
    '72273a2046616c73652c20277368617065273a2028342c2033292c207d20202020202020202020202020202020202020'
    '2020202020202020202020202020202020202020202020202020202020202020202020202020200a000000000000803f'
    '0000004000004040000080400000a0400000c0400000e04000000041000010410000204100003041504b03042d000000'
    '000000002100c3c3dad1ffffffffffffffff0a0014006c6162656c732e6e707901001000a000000000000000a0000000'
    '00000000934e554d5059010076007b276465736372273a20273c6938272c2027666f727472616e5f6f72646572273a20'
    '46616c73652c20277368617065273a2028342c292c207d20202020202020202020202020202020202020202020202020'
    '20202020202020202020202020202020202020202020202020202020202020202020200a000000000000000001000000'
    '0000000002000000000000000300000000000000504b01022d032d0000000000000021001672dca1b0000000b0000000'
    '050000000000000000000000800100000000782e6e7079504b01022d032d000000000000002100c3c3dad1a0000000a0'
    '0000000a00000000000000000000008001e70000006c6162656c732e6e7079504b050600000000020002006b000000c3'
    '0100000000'
)


def test_finding_npz_that_unpickles_on_load_is_an_invalid_data_error(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(NPZ_FINDING)
    with pytest.raises(TrimtabError, match="d.npz"):
        list(Dataset(path))


def _zip_flagged_encrypted(data: bytes) -> bytes:
    """The zip with bit 0 (encrypted) of every local and central header's flags set."""
    flagged = bytearray(data)
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = flagged.find(signature)
        while at >= 0:
            flagged[at + flags_at] |= 1
            at = flagged.find(signature, at + 4)
    return bytes(flagged)


def test_finding_npz_flagged_encrypted_is_an_invalid_data_error(tmp_path):
    """Fuzz finding (npz loader, the 2-hour run): one bit of a zip header marks a member encrypted, and
    zipfile then raised a bare RuntimeError ('password required')."""
    path = tmp_path / "d.npz"
    path.write_bytes(_zip_flagged_encrypted(NPZ_BYTES))
    with pytest.raises(TrimtabError, match="d.npz"):
        list(Dataset(path))


@pytest.mark.parametrize("content", [b"7", b"[]", b'"x"', b"null", b'{"model_sha256": 1, "ranges": 5}'])
def test_finding_a_ranges_file_that_is_not_a_json_object_is_a_calibration_error(tmp_path, content):
    """Fuzz finding (cache reader, the 2-hour run): a ranges file holding valid JSON that is not an
    object (`7`, `[]`) crashed the key check with an AttributeError."""
    entry = _fresh_cache(tmp_path)
    (entry / "ranges-minmax.json").write_bytes(content)
    with pytest.raises(TrimtabError, match="ranges-minmax.json") as info:
        calibrate(_MODEL, _DATA, "minmax", cache_dir=tmp_path)
    assert "stale or corrupt" in str(info.value) and info.value.hint


def _external_graph_with(old: bytes, new: bytes) -> bytes:
    """The graph with the first `old` replaced by `new` (same length: the protobuf stays framed)."""
    assert old in EXTERNAL_GRAPH and len(old) == len(new)
    return EXTERNAL_GRAPH.replace(old, new, 1)


@pytest.mark.parametrize("graph", [
    _external_graph_with(b"\x05w.bin", b"\x05\x00.bin"),  # the first location: a NUL byte
    _external_graph_with(b"\x05w.bin", b"\x05\x80.bin"),  # not UTF-8: protobuf returns bytes
    _external_graph_with(b"B\x04bias", b"B\x04\xe2ias"),  # an initializer's name not UTF-8
], ids=["nul-in-location", "location-not-utf8", "name-not-utf8"])
def test_finding_external_data_entries_that_are_not_text_are_an_invalid_model_error(tmp_path, graph):
    """Fuzz findings (ONNX loader with external data, the 2-hour run), the bytes shrunk by
    hypothesis: a location with a NUL byte (ValueError resolving the path), a location that is not
    UTF-8 (protobuf hands it over as bytes: TypeError), and a tensor name that is not UTF-8 (onnx's
    external-data reader raised TypeError)."""
    (tmp_path / "m.onnx").write_bytes(graph)
    (tmp_path / "w.bin").write_bytes(EXTERNAL_DATA)
    with pytest.raises(TrimtabError, match="m.onnx"):
        load_model(tmp_path / "m.onnx")
