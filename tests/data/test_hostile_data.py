"""Hostile data (issue 6), table-driven: every file is converted, skipped with a warning naming
it, or refused with an InvalidDataError naming it and the fix; never a traceback or a hang."""

from __future__ import annotations

import io
import logging
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from trimtab.data import Dataset, ImageTransform
from trimtab.data import text as text_module
from trimtab.errors import InvalidDataError

SMALL = ImageTransform(resize=16, crop=16)


def _noise(mode: str, size=(24, 20)) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _png_bytes(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kw)
    return buffer.getvalue()


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def _png_with_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (CRC fixed): a decompression bomb's header."""
    data = bytearray(_png_bytes(_noise("RGB", (1, 1))))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _ztxt_bomb() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (8 << 20), zip=True)  # 8 MB of text, ~8 kB compressed
    return _png_bytes(_noise("RGB"), pnginfo=info)


def _cmyk_jpeg() -> bytes:
    return _jpeg_bytes(_noise("CMYK"))


def _sixteen_bit() -> bytes:
    array = (np.arange(24 * 20, dtype=np.uint16).reshape(20, 24) * 137).astype(np.uint16)
    return _png_bytes(Image.fromarray(array))  # uint16 -> mode I;16


def _palette_transparent() -> bytes:
    image = _noise("P")
    return _png_bytes(image, transparency=0)


# (id, file name, bytes or a callable(folder) -> None, expected: "ok" | "skip" | "ignored")
IMAGE_CASES = [
    ("cmyk-jpeg", "x.jpg", _cmyk_jpeg, "ok"),
    ("16-bit-png", "x.png", _sixteen_bit, "ok"),
    ("palette-png", "x.png", lambda: _png_bytes(_noise("P")), "ok"),
    ("palette-transparency", "x.png", _palette_transparent, "ok"),
    ("rgba-png", "x.png", lambda: _png_bytes(_noise("RGBA")), "ok"),
    ("la-png", "x.png", lambda: _png_bytes(_noise("LA")), "ok"),
    ("one-bit-png", "x.png", lambda: _png_bytes(_noise("1")), "ok"),
    ("grayscale-jpeg", "x.jpg", lambda: _jpeg_bytes(_noise("L")), "ok"),
    ("jpeg-named-png", "x.png", lambda: _jpeg_bytes(_noise("RGB")), "ok"),
    ("truncated-png", "x.png", lambda: _png_bytes(_noise("RGB"))[:200], "skip"),
    ("truncated-jpeg", "x.jpg", lambda: _jpeg_bytes(_noise("RGB"))[:300], "skip"),
    ("header-only-png", "x.png", lambda: _png_bytes(_noise("RGB"))[:33], "skip"),
    ("bad-crc-png", "x.png", lambda: _png_bytes(_noise("RGB"))[:29] + b"\0\0\0\0" + _png_bytes(_noise("RGB"))[33:], "skip"),
    ("empty-file", "x.png", lambda: b"", "skip"),
    ("random-bytes", "x.jpg", lambda: np.random.default_rng(1).bytes(5000), "skip"),
    ("text-as-png", "x.png", lambda: b"hello, I am not a picture\n" * 40, "skip"),
    ("bomb-header-30k", "x.png", lambda: _png_with_size(30000, 30000), "skip"),
    ("bomb-header-max", "x.png", lambda: _png_with_size(2**31 - 1, 2**31 - 1), "skip"),
    ("ztxt-bomb", "x.png", _ztxt_bomb, "skip"),
    ("directory-named-png", "x.png", lambda folder: (folder / "x.png").mkdir(), "ignored"),
    ("fifo-named-png", "x.png", lambda folder: os.mkfifo(folder / "x.png"), "ignored"),
    ("symlink-to-dev-zero", "x.png", lambda folder: os.symlink("/dev/zero", folder / "x.png"), "ignored"),
    ("dangling-symlink", "x.png", lambda folder: os.symlink(folder / "nowhere.png", folder / "x.png"), "ignored"),
]


def _make(folder: Path, name: str, content) -> None:
    try:
        data = content()
    except TypeError:  # a builder that makes the file itself
        content(folder)
        return
    (folder / name).write_bytes(data)


@pytest.mark.parametrize("name,content,expected", [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES])
def test_hostile_image_is_converted_skipped_or_ignored(tmp_path, caplog, name, content, expected):
    folder = tmp_path / "images"
    folder.mkdir()
    _noise("RGB").save(folder / "a-good.png")
    _make(folder, name, content)
    with caplog.at_level(logging.WARNING):
        samples = list(Dataset(folder, SMALL))
    assert all(s.inputs["input"].shape == (3, 16, 16) and np.isfinite(s.inputs["input"]).all() for s in samples)
    if expected == "ok":
        assert len(samples) == 2
    elif expected == "skip":
        assert len(samples) == 1 and name in caplog.text
    else:
        assert len(samples) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_image_is_skipped_naming_it(tmp_path, caplog):
    _noise("RGB").save(tmp_path / "a.png")
    locked = tmp_path / "locked.png"
    _noise("RGB").save(locked)
    locked.chmod(0)
    try:
        with caplog.at_level(logging.WARNING):
            assert len(Dataset(tmp_path, SMALL)) == 1
        assert "locked.png" in caplog.text
    finally:
        locked.chmod(0o644)


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _lying_header_npz() -> bytes:
    """A zip whose x.npy header claims 10^12 floats but holds 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 16)
    return buffer.getvalue()


def _refusals():
    """(id, builder(tmp_path) -> path to pass to Dataset, text the message must hold)."""
    def file(name, data):
        def build(tmp):
            path = tmp / name
            path.write_bytes(data() if callable(data) else data)
            return path
        return build

    def folder_of(*names):
        def build(tmp):
            folder = tmp / "folder"
            folder.mkdir()
            for n in names:
                (folder / n).write_bytes(b"\xff\xd8\xff\xe0 broken")
            return folder
        return build

    return [
        ("empty-folder", folder_of(), "no images found"),
        ("only-broken-images", folder_of("a.jpg", "b.png"), "could be decoded"),
        ("missing-path", lambda tmp: tmp / "nope", "does not exist"),
        ("unknown-suffix", file("data.csv", b"1,2\n"), "unsupported file type"),
        ("empty-text", file("t.txt", b""), "no non-blank lines"),
        ("blank-text", file("t.txt", b"\n \r\n\t\n"), "no non-blank lines"),
        ("npz-object-array", file("d.npz", lambda: _npz_bytes(x=np.array([{"a": 1}], dtype=object))), "Python objects"),
        ("npz-not-a-zip", file("d.npz", b"definitely not a zip file"), "not a readable .npz"),
        ("npz-truncated", file("d.npz", lambda: _npz_bytes(x=np.ones((4, 3), np.float32))[:60]), "d.npz"),
        ("npz-lying-header", file("d.npz", _lying_header_npz), "declares shape"),
        ("npz-unequal-lengths", file("d.npz", lambda: _npz_bytes(x=np.ones((4, 2)), labels=np.ones(3, int))), "different numbers"),
        ("npz-float-labels", file("d.npz", lambda: _npz_bytes(x=np.ones((4, 2)), labels=np.ones(4))), "integer"),
        ("npz-empty", file("d.npz", lambda: _npz_bytes(x=np.ones((0, 2)))), "0 samples"),
        ("npz-scalar", file("d.npz", lambda: _npz_bytes(x=np.float32(1))), "scalar"),
    ]


REFUSALS = _refusals()


@pytest.mark.parametrize("builder,needle", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_hostile_data_is_refused_with_a_hint(tmp_path, builder, needle):
    path = builder(tmp_path)
    with pytest.raises(InvalidDataError) as info:
        list(Dataset(path, SMALL if path.suffix == "" else None))
    assert needle in str(info.value) and info.value.hint
    assert path.name in str(info.value)


def _raw_text(text: str):
    return {"text": np.array([len(text)])}


TEXT_CASES = [
    ("latin-1", "café naïve\n".encode("latin-1"), ["café naïve"], "not valid UTF-8"),
    ("windows-1252", b"it\x92s \x93quoted\x94\n", ["it\u2019s \u201cquoted\u201d"], "not valid UTF-8"),
    ("utf-16-bom", "héllo\r\nwörld\r\n".encode("utf-16"), ["héllo", "wörld"], ""),
    ("utf-8-bom", "\ufeffhi\n".encode("utf-8"), ["hi"], ""),
    ("crlf", b"a\r\nb\r\n", ["a", "b"], ""),
    ("nul-bytes", b"a\x00b\nc\n", ["a\x00b", "c"], ""),
    ("binary-garbage", bytes(range(256)) * 4, None, "not valid UTF-8"),
]


@pytest.mark.parametrize("content,lines,warning", [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_odd_text_files_are_read_or_warned_about(tmp_path, caplog, content, lines, warning):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        texts = [s.inputs for s in Dataset(path, lambda raw: {"x": np.zeros(1)} if isinstance(raw, str) else None)]
        got = [item.raw for item in Dataset(path, lambda raw: {"x": np.zeros(1)})._source]
    assert len(texts) == len(got)
    if lines is not None:
        assert got == lines
    assert warning in caplog.text and (not warning or "t.txt" in caplog.text)


def test_huge_line_is_read_in_bounded_memory(tmp_path, caplog, monkeypatch):
    """A 32 MB file without newlines: the reader never holds more than the kept prefix + a chunk."""
    import tracemalloc

    monkeypatch.setattr(text_module, "MAX_LINE_CHARS", 1000)
    path = tmp_path / "one-line.txt"
    with open(path, "wb") as handle:
        handle.write(b"__label__a ")
        for _ in range(32):
            handle.write(b"z" * (1 << 20))
        handle.write(b"\n__label__b short\n")
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING):
            items = [item.raw for item in Dataset(path, lambda raw: {"x": np.zeros(1)})._source]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert items == ["z" * (1000 - len("__label__a ")), "short"]
    assert "one-line.txt:1" in caplog.text
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while reading a 32 MB line"
