"""The example registry and the build cache (fast: no example is built here)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from trimtab.errors import InvalidModelError
from trimtab.examples import Example, _cache, get_example, list_examples
from trimtab.options import Task

EXPECTED = {
    "effnet-lite0": (Task.CLASSIFY, "top1"),
    "fashion-cnn": (Task.CLASSIFY, "top1"),
    "minilm": (Task.EMBED, "cosine"),
}


def test_list_examples_names_tasks_and_metrics():
    listed = {example.name: (example.task, example.metric) for example in list_examples()}
    assert listed == EXPECTED
    assert all(example.description and example.calibration_size > 0 for example in list_examples())


def test_get_example_accepts_the_example_prefix():
    assert get_example("example:minilm") is get_example("minilm")


def test_unknown_example_lists_the_known_names():
    with pytest.raises(InvalidModelError) as caught:
        get_example("resnet-9000")
    message = str(caught.value)
    assert "resnet-9000" in message
    for name in EXPECTED:
        assert name in message
    assert caught.value.hint


def test_example_is_frozen_and_validated():
    example = get_example("fashion-cnn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        example.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Example("x", "d", Task.CLASSIFY, "top1", 0, "fashion_cnn")
    assert Example("x", "d", "embed", "cosine", 1, "minilm").task is Task.EMBED


def test_calibration_size_must_be_positive():
    with pytest.raises(ValueError):
        get_example("minilm").calibration_data(0)


def test_listing_examples_imports_no_torch():
    code = (
        "import sys, trimtab.examples as e; e.list_examples(); e.get_example('minilm'); "
        "heavy = [m for m in ('torch', 'transformers', 'tokenizers', 'sklearn', 'skimage') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# the build cache -----------------------------------------------------------------------------
class CountingBuild:
    def __init__(self, payload: bytes = b"model-bytes") -> None:
        self.calls = 0
        self.payload = payload

    def __call__(self, path):
        self.calls += 1
        path.write_bytes(self.payload)


def test_cached_model_builds_once():
    build = CountingBuild()
    first = _cache.cached_model("unit-cache", "r1", build)
    second = _cache.cached_model("unit-cache", "r1", build)
    assert first == second and first.read_bytes() == b"model-bytes"
    assert build.calls == 1
    meta = json.loads(first.with_name(_cache.META_FILE).read_text())
    assert meta["recipe"] == "r1" and meta["bytes"] == len(b"model-bytes")


def test_cached_model_rebuilds_a_corrupt_file():
    build = CountingBuild()
    path = _cache.cached_model("unit-corrupt", "r1", build)
    path.write_bytes(b"model-bytez")  # same size, different bytes: only the hash can tell
    _cache._verified.clear()  # a new process would not remember the earlier check
    _cache.cached_model("unit-corrupt", "r1", build)
    assert build.calls == 2 and path.read_bytes() == b"model-bytes"


def test_cached_model_rebuilds_missing_file_or_new_recipe():
    build = CountingBuild()
    path = _cache.cached_model("unit-missing", "r1", build)
    path.unlink()
    _cache.cached_model("unit-missing", "r1", build)
    assert build.calls == 2
    _cache.cached_model("unit-missing", "r2", build)
    assert build.calls == 3


def test_failed_build_leaves_no_valid_cache():
    def failing(path):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        _cache.cached_model("unit-fail", "r1", failing)
    build = CountingBuild()
    _cache.cached_model("unit-fail", "r1", build)
    assert build.calls == 1
