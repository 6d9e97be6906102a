"""Hostile model files (issue 6): each fails with an InvalidModelError naming the file, before
anything large is allocated, or (over 2 GB with external data) loads."""

import os
import random
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import conv_bn_relu_model
from trimtab.errors import InvalidModelError
from trimtab.load import load_model, onnx_file

ROOT = Path(__file__).resolve().parents[2]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_if_model_bytes(depth: int) -> bytes:
    """A model whose If then-branches nest `depth` deep, written byte by byte (protobuf's own
    encoder refuses to build it past ~30 levels, a hostile writer does not)."""
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1]).SerializeToString()
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]).SerializeToString()
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3) + _varint(5)
        node = _field(1, b"c") + _field(2, b"y") + _field(4, b"If") + _field(5, attribute)
        graph = _field(1, node) + _field(2, b"g") + _field(12, output)
    opset = helper.make_opsetid("", 17).SerializeToString()
    return _varint(1 << 3) + _varint(8) + _field(7, graph) + _field(8, opset)


def _model_with(initializer, nodes=None, output_shape=("n",)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    nodes = nodes or [helper.make_node("Add", ["x", initializer.name], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))],
                              initializer=[initializer])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _external(tensor, location, length=None, offset=None):
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    return tensor


def _huge_dims_tensor():
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20, 1 << 10])
    return tensor


def _save(folder: Path, model, name="m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _expect_refusal(path: Path, pattern: str = "") -> InvalidModelError:
    with pytest.raises(InvalidModelError) as info:
        load_model(path)
    assert path.name in str(info.value) or path.stem in str(info.value)
    assert info.value.hint
    assert re.search(pattern, str(info.value)), str(info.value)
    return info.value


# ---- hostile files, table-driven: (id, builder(tmp_path) -> path, pattern in the message) ----

def _deep_nesting(tmp_path):
    path = tmp_path / "deep.onnx"
    path.write_bytes(nested_if_model_bytes(300))
    return path


def _huge_initializer(tmp_path):
    tensor = _huge_dims_tensor()
    tensor.raw_data = b"\0" * 4
    return _save(tmp_path, _model_with(tensor), "huge-init.onnx")


def _huge_external(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 64)
    return _save(tmp_path, _model_with(_external(_huge_dims_tensor(), "w.bin")), "huge-ext.onnx")


def _absurd_length(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 64)
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    return _save(tmp_path, _model_with(_external(tensor, "w.bin", length=10**15)), "length.onnx")


def _truncated_external(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 8)
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1000])
    return _save(tmp_path, _model_with(_external(tensor, "w.bin")), "short.onnx")


def _negative_offset(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    return _save(tmp_path, _model_with(_external(tensor, "w.bin", offset=-8)), "offset.onnx")


def _fifo_external(tmp_path):
    os.mkfifo(tmp_path / "pipe.bin")  # reading it would block forever
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    return _save(tmp_path, _model_with(_external(tensor, "pipe.bin")), "fifo.onnx")


def _device_symlink(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.bin")
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 28])
    return _save(tmp_path, _model_with(_external(tensor, "zero.bin")), "zero.onnx")


def _subgraph_escape(tmp_path):
    """External data in an If branch's initializer pointing out of the folder (the loader's check
    once looked at the main graph only)."""
    (tmp_path / "secret.bin").write_bytes(b"\1" * 16)
    weight = _external(TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4]), "../secret.bin")
    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["b"])], "branch", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])], initializer=[weight])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return _save(tmp_path / "model", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "sub.onnx")


def _constant_of_shape_bomb(tmp_path):
    shape = numpy_helper.from_array(np.array([100000, 100000, 100], np.int64), "s")
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])]
    return _save(tmp_path, _model_with(shape, nodes), "cos.onnx")


def _over_2gb_file(tmp_path):
    path = tmp_path / "big.onnx"
    with open(path, "wb") as handle:  # sparse: no disk is used
        handle.truncate(onnx_file.PROTOBUF_LIMIT + 1)
    return path


HOSTILE_MODELS = [
    ("deep-nesting-300", _deep_nesting, "not a readable ONNX model"),
    ("huge-initializer", _huge_initializer, "over trimtab's limit"),
    ("huge-external-dims", _huge_external, "over trimtab's limit"),
    ("absurd-external-length", _absurd_length, "holds"),
    ("truncated-external", _truncated_external, "holds"),
    ("negative-offset", _negative_offset, "holds"),
    ("fifo-external", _fifo_external, "not a regular file"),
    ("symlink-to-dev-zero", _device_symlink, "outside the model folder"),
    ("subgraph-external-escape", _subgraph_escape, "outside the model folder"),
    ("constant-of-shape-bomb", _constant_of_shape_bomb, "over trimtab's limit"),
    ("over-2gb-file", _over_2gb_file, "2 GB limit"),
]


@pytest.mark.parametrize("builder,pattern", [case[1:] for case in HOSTILE_MODELS], ids=[c[0] for c in HOSTILE_MODELS])
def test_hostile_model_is_refused_naming_the_file(tmp_path, builder, pattern):
    _expect_refusal(builder(tmp_path), pattern)


def test_subgraph_depth_limit_is_checked_on_a_parseable_model(tmp_path, monkeypatch):
    path = tmp_path / "nest5.onnx"
    path.write_bytes(nested_if_model_bytes(5))
    onnx.load(path)  # protobuf parses it: the limit is trimtab's own
    monkeypatch.setattr(onnx_file, "MAX_SUBGRAPH_DEPTH", 3)
    _expect_refusal(path, "nests subgraphs")


def _garbage_variants(data: bytes):
    rng = random.Random(6)
    yield "empty", b""
    yield "one-byte", data[:1]
    yield "zeros", b"\0" * 4096
    yield "random", bytes(rng.getrandbits(8) for _ in range(4096))
    yield "png-header", b"\x89PNG\r\n\x1a\n" + data
    yield "zip", b"PK\x03\x04" + data[:100]
    yield "pickle", b"\x80\x04\x95" + data[:64]
    for cut in (0.1, 0.5, 0.9, 0.99):
        yield f"truncated-{cut}", data[: int(len(data) * cut)]
    flipped = bytearray(data)
    for i in range(0, len(flipped), 7):
        flipped[i] ^= 0xFF
    yield "bit-flipped", bytes(flipped)
    yield "huge-length-prefix", b"\x3a\xff\xff\xff\xff\x0f" + data  # field 7 claims 4 GB


GARBAGE = list(_garbage_variants(conv_bn_relu_model().SerializeToString()))


@pytest.mark.parametrize("content", [g[1] for g in GARBAGE], ids=[g[0] for g in GARBAGE])
def test_truncated_or_garbage_file_is_an_invalid_model_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidModelError, match="bad"):
        load_model(path)


def _external_model(folder: Path) -> Path:
    model = conv_bn_relu_model()
    path = folder / "ext.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def test_large_model_path_checks_by_path_and_hashes_without_serialising(tmp_path, monkeypatch):
    """The >2 GB code path, scaled down: the limit is lowered so a tiny model takes it."""
    path = _external_model(tmp_path / "ext")
    small = load_model(path)
    monkeypatch.setattr(onnx_file, "PROTOBUF_LIMIT", 600)  # the file ~530 B, with its data ~770 B
    checked = []
    real_check = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda m, **kw: (checked.append(m), real_check(m, **kw))[1])
    large = load_model(path)
    assert checked == [str(path)]
    assert large.sha256 != small.sha256 and large.sha256 == load_model(path).sha256
    weights = {t.name: numpy_helper.to_array(t) for t in large.proto.graph.initializer}
    assert set(weights) == {t.name for t in onnx.load(path).graph.initializer}  # data is back in place


@pytest.mark.slow
def test_model_over_2gb_with_external_data_loads(tmp_path):
    """A real 2.1 GB model: weights in a data file beside it, the .onnx itself tiny."""
    import shutil

    if shutil.disk_usage(tmp_path).free < 6 * 2**30:
        pytest.skip("needs 6 GB of free disk")
    count = (onnx_file.PROTOBUF_LIMIT // 4 + 2**24) // 2  # two tensors, 2.1 GB in all
    folder = tmp_path / "big"
    folder.mkdir()
    initializers, nodes = [], []
    with open(folder / "weights.bin", "wb") as data:
        for i in range(2):
            block = np.full(count, i + 1, np.float32)
            offset = data.tell()
            data.write(block.tobytes())
            del block
            initializers.append(_external(TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[count]),
                                          "weights.bin", length=count * 4, offset=offset))
    nodes = [helper.make_node("ReduceSum", ["w0"], ["s0"], keepdims=0),
             helper.make_node("ReduceSum", ["w1"], ["s1"], keepdims=0),
             helper.make_node("Add", ["s0", "s1"], ["t"]), helper.make_node("Add", ["x", "t"], ["y"])]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=initializers)
    path = folder / "big.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    model = load_model(path)
    assert onnx_file.is_over_protobuf_limit(model.proto)
    assert model.input_names == ("x",) and len(model.sha256) == 64
    assert numpy_helper.to_array(model.proto.graph.initializer[1])[-1] == 2.0


UNSAFE = [
    (re.compile(r"\bimport pickle\b|\bpickle\.loads?\("), "pickle"),
    (re.compile(r"\btorch\.load\((?![^)]*weights_only=True)"), "torch.load without weights_only=True"),
    (re.compile(r"\bnp\.load\((?![^)]*allow_pickle=False)"), "np.load without allow_pickle=False"),
    (re.compile(r"allow_pickle=True"), "allow_pickle=True"),
    (re.compile(r"\b(joblib|dill|cloudpickle|shelve|marshal)\b"), "a pickle-based serialiser"),
    (re.compile(r"\byaml\.load\("), "yaml.load"),
    (re.compile(r"(?<![.\w])(eval|exec)\("), "eval/exec"),
]
# fashion_cnn imports pickle only to catch pickle.UnpicklingError around torch.load(weights_only=True)
ALLOWED = {("examples/fashion_cnn.py", "pickle")}


def test_source_never_unpickles():
    found = []
    for path in sorted((ROOT / "src" / "trimtab").rglob("*.py")):
        rel = path.relative_to(ROOT / "src" / "trimtab").as_posix()
        text = path.read_text(encoding="utf-8")
        for pattern, what in UNSAFE:
            for match in pattern.finditer(text):
                line = text[: match.start()].count("\n") + 1
                if (rel, what) not in ALLOWED:
                    found.append(f"{rel}:{line}: {what}")
    assert not found, "\n".join(found)


def test_source_scan_catches_unsafe_loads():
    sample = "x = np.load(p)\nw = torch.load(f, map_location='cpu')\nimport pickle\n"
    hits = {what for pattern, what in UNSAFE if pattern.search(sample)}
    assert {"np.load without allow_pickle=False", "torch.load without weights_only=True", "pickle"} <= hits
