"""Models over protobuf's 2 GB limit (issue 6): built, saved with their data beside them, run by
ONNX Runtime and tuned end to end, never serialised whole.

The fast tests lower `onnx_file.PROTOBUF_LIMIT` so a 25 KB model takes every >2 GB code path; the
slow test builds and runs a real 2.2 GB model.
"""

import dataclasses
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trimtab
from bench.large_model import LAYERS, WIDTH, write_big_model
from tests.search._chain import write_chain
from trimtab import _onnx_io
from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.build import build_fp16, build_fp32, build_int8
from trimtab.calibrate import calibrate
from trimtab.load import load_model, onnx_file
from trimtab.measure import peak_memory_bytes
from trimtab.resume import damaged_files

# Under every artifact of the chain (fp32 25 KB, fp16 13 KB, int8 10 KB), over every saved graph
# without its data (at most 6 KB): each artifact then takes the >2 GB path.
FORCED_LIMIT = 8000


@pytest.fixture
def chain(tmp_path):
    """The search tests' 6-MatMul chain, saved with external data; its data set."""
    data = write_chain(tmp_path / "plain.onnx", width=32, samples=64)
    (tmp_path / "ext").mkdir()
    path = tmp_path / "ext" / "chain.onnx"
    onnx.save(onnx.load(tmp_path / "plain.onnx"), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    return path, data


def _data_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + ".") and p.name.endswith(".data"))


def _weights(proto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def test_save_over_the_limit_writes_the_data_beside_it_and_leaves_the_proto_as_it_was(chain, tmp_path, monkeypatch):
    path, _ = chain
    monkeypatch.setattr(onnx_file, "PROTOBUF_LIMIT", FORCED_LIMIT)
    model = load_model(path)
    artifact = build_fp32(model)
    before, sha = _weights(artifact.proto), artifact.sha256()
    saved = artifact.save(tmp_path / "out" / "fp32.onnx")
    [data] = _data_files(saved)
    assert saved.stat().st_size < FORCED_LIMIT < (saved.parent / data).stat().st_size
    assert _weights(artifact.proto).keys() == before.keys() and artifact.sha256() == sha  # the proto is untouched
    assert all(np.array_equal(_weights(artifact.proto)[k], v) for k, v in before.items())
    back = onnx.load(saved)  # onnx reads the data by the model's path
    assert all(np.array_equal(_weights(back)[k], v) for k, v in before.items())
    onnx.checker.check_model(str(saved))
    assert artifact.save(saved) == saved and _data_files(saved) == [data]  # same bytes, same data file
    artifact.proto.graph.initializer[0].raw_data = np.ones(32 * 32, np.float32).tobytes()
    artifact.save(saved)
    assert _data_files(saved) != [data] and len(_data_files(saved)) == 1  # the stale data file is gone
    monkeypatch.setattr(onnx_file, "PROTOBUF_LIMIT", 2**31 - 1)
    artifact.save(saved)
    assert _data_files(saved) == [] and onnx.load(saved).graph.initializer[0].HasField("raw_data")


def test_a_save_killed_before_the_graph_leaves_the_old_model_whole(chain, tmp_path, monkeypatch):
    """The data file is written (under a new name) first, the graph after it: a crash between the two
    leaves the previous graph with the previous data."""
    path, _ = chain
    monkeypatch.setattr(onnx_file, "PROTOBUF_LIMIT", FORCED_LIMIT)
    artifact = build_fp32(load_model(path))
    saved = artifact.save(tmp_path / "fp32.onnx")
    old = _weights(onnx.load(saved))
    artifact.proto.graph.initializer[0].raw_data = np.ones(32 * 32, np.float32).tobytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(_onnx_io, "atomic_write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        artifact.save(saved)
    assert len(_data_files(saved)) == 2  # the new one is written, the old one still there
    assert all(np.array_equal(_weights(onnx.load(saved))[k], v) for k, v in old.items())


def test_build_and_run_over_the_limit_give_the_outputs_of_the_normal_path(chain, tmp_path, monkeypatch):
    path, data = chain
    x = {"x": np.stack([s.inputs["x"] for s in list(data)[:8]])}

    def build_and_run(folder: Path) -> dict:
        model = load_model(path)
        ranges = calibrate(model, data, "minmax", cache_dir=folder / "cache").ranges
        outputs = {}
        for artifact in (build_fp32(model), build_fp16(model), build_int8(model, ranges, "ort-cpu")):
            saved = artifact.save(folder / f"{artifact.name}.onnx")
            with OrtCpuBackend(artifact.proto) as from_proto, OrtCpuBackend(str(saved)) as from_path:
                large = from_proto._large_file
                outputs[artifact.name] = (from_proto.infer(x), from_path.infer(x), _data_files(saved), large)
            assert large is None or not large.parent.exists()  # the temporary copy is removed at close
        assert peak_memory_bytes(saved, x) > 0  # a fresh process reads the last one by its path
        return outputs

    normal = build_and_run(tmp_path / "normal")
    monkeypatch.setattr(onnx_file, "PROTOBUF_LIMIT", FORCED_LIMIT)
    forced = build_and_run(tmp_path / "forced")
    assert set(forced) == {"fp32", "fp16", "int8-ort-cpu"}
    for name, (from_proto, from_path, data_files, large) in forced.items():
        assert len(data_files) == 1 and large is not None, name  # the data beside it; ORT read a path
        assert normal[name][2] == [] and normal[name][3] is None
        np.testing.assert_array_equal(from_proto["h5"], from_path["h5"])
        np.testing.assert_allclose(from_proto["h5"], normal[name][0]["h5"], rtol=1e-6, atol=1e-6, err_msg=name)


def _refusing_protos_over_the_limit(function):
    """`function` as it behaves on a real >2 GB proto, under the lowered limit: a ModelProto whose
    initializers hold more than the limit cannot be serialised for onnx's C++ side."""
    from google.protobuf.message import EncodeError

    def refusing(model, *args, **kwargs):
        if isinstance(model, onnx.ModelProto) and _onnx_io.initializer_bytes(model) > onnx_file.PROTOBUF_LIMIT:
            raise EncodeError("Failed to serialize proto (the test's lowered limit)")
        return function(model, *args, **kwargs)

    return refusing


def test_tune_over_the_limit_matches_the_normal_path(chain, tmp_path, monkeypatch):
    """calibrate, build, evaluate, the mixed search, bench, peak memory and explain, all on
    artifacts that take the >2 GB path: the same accuracies and search as the normal path."""
    path, data = chain
    config = trimtab.TuneConfig(task="generic", budget=0.2, methods=("minmax",), bench_seconds=0.3, explain=True,
                                measure_memory=False)  # the memory probe reads a saved artifact: the test above
    cheap = dataclasses.replace(config, explain=False)  # only its accuracies are compared
    normal = trimtab.tune(path, data, data, cheap, out=tmp_path / "normal")
    monkeypatch.setattr(onnx_file, "PROTOBUF_LIMIT", FORCED_LIMIT)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", _refusing_protos_over_the_limit(onnx.shape_inference.infer_shapes))
    forced = trimtab.tune(path, data, data, config, out=tmp_path / "forced")
    assert [(c.name, c.metric_value) for c in forced.candidates] == [(c.name, c.metric_value) for c in normal.candidates]
    assert forced.search["best"] == normal.search["best"] is not None
    models = tmp_path / "forced" / "models"
    for candidate in forced.candidates:
        saved = tmp_path / "forced" / candidate.artifact
        assert len(_data_files(saved)) == 1 and saved.stat().st_size < FORCED_LIMIT, candidate.name
        assert candidate.model_bytes == saved.stat().st_size + (saved.parent / _data_files(saved)[0]).stat().st_size
    assert onnx.load(models / "chosen.onnx").graph.initializer  # it refers to its candidate's data file
    assert not any("explain pass failed" in note for note in forced.notes), forced.notes
    assert damaged_files(tmp_path / "forced") == []


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_a_model_over_2gb_builds_saves_and_runs(tmp_path):
    """A real 2.18 GB model: loaded, calibrated (ONNX Runtime reads a >2 GB proto by path), built as
    fp32/fp16/int8, each saved with its data beside it and run from its path against numpy."""
    if shutil.disk_usage(tmp_path).free < 12 * 2**30:
        pytest.skip("needs 12 GB of free disk: the model, its calibration copy and three artifacts")
    from trimtab.data import Dataset
    from trimtab.data.dataset import Sample

    started = time.monotonic()
    x = np.random.default_rng(1).standard_normal((4, WIDTH)).astype(np.float32)
    path, expected = write_big_model(tmp_path, x)
    timings = {"write": time.monotonic() - started}
    model = load_model(path)
    assert onnx_file.is_over_protobuf_limit(model.proto)
    timings["load"] = time.monotonic() - started - sum(timings.values())
    calib = Dataset([Sample({"x": row}, source=f"s{i}") for i, row in enumerate(x)], name="big-calib")
    ranges = calibrate(model, calib, "minmax", cache_dir=tmp_path / "cache").ranges
    timings["calibrate"] = time.monotonic() - started - sum(timings.values())
    folder = tmp_path / "models"
    for build, floor in ((build_fp32, 0.999999), (build_fp16, 0.9999), (lambda m: build_int8(m, ranges, "ort-cpu"), 0.99)):
        artifact = build(model)
        saved = artifact.save(folder / f"{artifact.name}.onnx")
        size = artifact.size_bytes()
        del artifact
        with OrtCpuBackend(str(saved)) as backend:
            y = backend.infer({"x": x})[f"h{LAYERS}"]
        cosine = _cosine(y, expected)
        timings[saved.stem] = time.monotonic() - started - sum(timings.values())
        print(f"{saved.stem}: {size / 1e9:.2f} GB, data files {_data_files(saved)}, cosine {cosine:.6f}")
        assert cosine >= floor, (saved.stem, cosine)
        assert damaged_files(folder) == []
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + f"; peak RSS {peak:.2f} GiB")
    assert len(_data_files(folder / "fp32.onnx")) == 1 and (folder / "fp32.onnx").stat().st_size < 2**20


def test_only_the_saved_files_own_data_files_are_removed(chain, tmp_path, monkeypatch):
    path, _ = chain
    monkeypatch.setattr(onnx_file, "PROTOBUF_LIMIT", FORCED_LIMIT)
    artifact = build_fp32(load_model(path))
    out = tmp_path / "out"
    other = artifact.save(out / "a.onnx.onnx")  # its data file also starts with "a.onnx."
    (out / "a.onnx.notes.data").write_text("not ours")
    artifact.save(out / "a.onnx")
    assert len(_data_files(other)) == 1 and (out / "a.onnx.notes.data").exists()
    assert onnx.load(other).graph.initializer
