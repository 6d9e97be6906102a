"""Real 8-bit linear layers: the linear layers of int8 (and fp8) Q/DQ artifacts become `trimtab.QLinear` (int8
operands with int32 sums, or fp8; scale/bias/activation in the epilogue), on the CPU here through the float64
reference of `lowbit` (the CUDA kernels are checked against that same reference in
`test_lowbit_cuda_kernels_match_the_reference` when a GPU is present)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.backends.gpu._support import CUDA, needs_cuda, reference
from tests.build._support import as_model, encoder_block, encoder_feeds, minmax_ranges
from trimtab.backends.gpu import GpuBackend
from trimtab.measure.metrics import sqnr_db

torch = pytest.importorskip("torch")


def _int8_encoder(**options):
    from trimtab.build import build_int8

    block = as_model(encoder_block())
    feeds = encoder_feeds(np.random.default_rng(0), batch=8)
    return build_int8(block, minmax_ranges(block.proto, feeds), "tensorrt", **options), feeds


def _eight_bit_linears(plan):
    """The plan's 8-bit linear layers: QLinear steps, and the Q/K/V products inside QKVAttention."""
    return [s for s in plan.steps if s.op == "trimtab.QLinear"
            or (s.op == "trimtab.QKVAttention" and s.attrs["linear_op"] == "trimtab.QLinear")]


def _run(proto, feeds, device="cpu"):
    with GpuBackend(proto, device=device, cache=False) as backend:
        got = backend.infer(feeds)["y"]
        engine = backend.engine({k: v.shape for k, v in feeds.items()})
        return got, engine.plan, backend.builds[-1].notes


def test_linear_layers_of_an_int8_artifact_run_as_int8_gemms_and_match_the_qdq_reference():
    artifact, feeds = _int8_encoder()
    got, plan, notes = _run(artifact.proto, feeds)
    qlinears = [s for s in plan.steps if s.op == "trimtab.QLinear"]
    matmuls = sum(n.op_type == "MatMul" and n.input[1] not in ("",) for n in artifact.proto.graph.node)
    assert qlinears and plan.notes["fusions"]["int8_linear"] == len(qlinears) <= matmuls
    assert all(s.attrs["w_q"].dtype == torch.int8 for s in qlinears)
    assert not any(s.op == "trimtab.FakeQuant" for s in plan.steps if s.outputs[0] in {q.inputs[0] for q in qlinears})
    assert set(v["ran"] for v in notes["layer_precisions"].values()) == {"int8"}
    want = reference(artifact.proto, feeds)["y"]
    assert sqnr_db(got, want) >= 30.0


def test_an_ffn_up_projection_writes_int8_for_the_down_projection():
    artifact, feeds = _int8_encoder()
    _, plan, _ = _run(artifact.proto, feeds)
    writers = [s for s in plan.steps if s.op == "trimtab.QLinear" and s.attrs.get("out_scale") is not None]
    assert writers and plan.notes["fusions"]["int8_output"] == len(writers)
    for step in writers:
        assert plan.dtypes[step.outputs[0]] == "int8"
        readers = [s for s in plan.steps if step.outputs[0] in s.inputs]
        assert readers and all(r.op == "trimtab.QLinear" and r.attrs["x_quantized"] for r in readers)


def test_the_attention_writes_int8_for_the_output_projection():
    artifact, feeds = _int8_encoder(unquantized="fp16")
    got, plan, _ = _run(artifact.proto, feeds)
    attention = [s for s in plan.steps if s.op in ("trimtab.Attention", "trimtab.QKVAttention")]
    assert len(attention) == 1 and plan.notes["fusions"]["attention_quant"] == 1
    head = attention[0]
    attrs = head.attrs["attention"] if head.op == "trimtab.QKVAttention" else head.attrs
    assert plan.dtypes[head.outputs[0]] == attrs["out_element"] == "int8"
    projection = [s for s in plan.steps if s.op == "trimtab.QLinear" and s.attrs["x_scale"] == attrs["out_scale"]
                  and plan.dtypes[s.inputs[0]] == "int8" and s.attrs["x_quantized"]]
    assert len(projection) == 1
    assert sqnr_db(got, reference(artifact.proto, feeds)["y"]) >= 30.0


def test_int8_weights_survive_the_engine_cache(tmp_path):
    artifact, feeds = _int8_encoder()
    shapes = {k: v.shape for k, v in feeds.items()}
    with GpuBackend(artifact.proto, device="cpu", cache_dir=tmp_path) as cold:
        cold.build(shapes)
        first = cold.infer(feeds)["y"]
    with GpuBackend(artifact.proto, device="cpu", cache_dir=tmp_path) as warm:
        assert warm.build(shapes).from_cache
        plan = warm.engine(shapes).plan
        assert any(s.op == "trimtab.QLinear" and s.attrs["w_q"].dtype == torch.int8 for s in plan.steps)
        np.testing.assert_array_equal(warm.infer(feeds)["y"], first)


def test_the_qlinear_float_path_matches_its_int8_path():
    """The tactic the engine may pick instead (fake-quant + float GEMM) computes the same layer."""
    from trimtab.backends.gpu import lowbit
    from trimtab.backends.gpu.fused import _qlinear
    from trimtab.backends.gpu.ops import NodeSpec

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((6, 16)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((8, 16)).astype(np.float32))
    w_scale = w.abs().amax(1) / 127
    w_q = torch.round(w / w_scale[:, None]).to(torch.int8)
    attrs = {"x_scale": 0.03, "w_q": w_q, "col_scale": 0.03 * w_scale, "act": "gelu", "out_dtype": "float32"}
    spec = NodeSpec("trimtab.QLinear", "l", attrs, [None, None, None], [(6, 16), (8, 16), (8,)], 17, [True, True, True])
    run = _qlinear(spec)
    bias = torch.linspace(-1, 1, 8)
    int8 = run(x, w_q.float() * w_scale[:, None], bias)
    assert run.tactic["chosen"] == "int8"
    float_path = lowbit.qgemm_reference(lowbit.quantize_reference(x, 0.03, torch.int8), w_q, 0.03 * w_scale, bias,
                                        "gelu", torch.float32)
    torch.testing.assert_close(int8, float_path)
    fake = torch.nn.functional.gelu(torch.nn.functional.linear(torch.clamp(torch.round(x / 0.03), -128, 127) * 0.03,
                                                               w_q.float() * w_scale[:, None], bias))
    torch.testing.assert_close(int8, fake, rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("fast,tma", [(False, False), (True, False), (True, True)])
def test_lowbit_cuda_kernels_match_the_reference(fast, tma):
    """Exact mode: IEEE division and erf-GELU, as the float64 reference. Fast mode (the engine's):
    reciprocal scale and tanh-GELU on the hardware tanh, within ~1e-3 of erf-GELU."""
    from trimtab.backends.gpu import lowbit

    torch.manual_seed(0)
    for m, n, k, act in [(300, 72, 96, "gelu"), (1024, 768, 768, None), (64, 48, 3072, "relu"), (4096, 3072, 768, "gelu")]:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        w_q = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
        col = torch.rand(n, device="cuda") * 1e-3
        bias = torch.randn(n, device="cuda")
        x_q = lowbit.quantize(x, 0.02, torch.int8, fast=fast)
        exact_q = lowbit.quantize_reference(x, 0.02, torch.int8)
        assert (x_q.int() - exact_q.int()).abs().max() <= int(fast)
        assert (x_q != exact_q).float().mean() < 1e-4
        use_tma = tma and lowbit.tma_ok(x_q, w_q, torch.int8)
        assert use_tma or not tma or n % 16
        got = lowbit.qgemm(x_q, w_q, col, bias, act, torch.float32, fast=fast, tma=use_tma)
        want = lowbit.qgemm_reference(x_q, w_q, col, bias, act, torch.float32)
        tolerance = 2e-3 if fast and act == "gelu" else 1e-4
        torch.testing.assert_close(got, want, rtol=1e-4, atol=tolerance)
        got8 = lowbit.qgemm(x_q, w_q, col, bias, act, torch.int8, 0.05, fast=fast, tma=use_tma).int()
        want8 = lowbit.qgemm_reference(x_q, w_q, col, bias, act, torch.int8, 0.05).int()
        assert (got8 - want8).abs().max() <= 1  # a tie may round the other way after fp32 sums
        assert (got8 != want8).float().mean() < (0.05 if fast and act == "gelu" else 1e-3)
        fake = lowbit.fake_quantize(x, 0.02, torch.int8, fast=fast)
        assert fake.dtype == x.dtype and torch.equal(fake, (x_q.float() * 0.02).half())


@needs_cuda
@pytest.mark.parametrize("out_dtype", ["float16", "int8"])
def test_the_persistent_tma_schedule_gives_the_same_values_as_one_program_per_tile(out_dtype):
    """The autotuner may pick either schedule per shape: both must write the same numbers (same
    integer sums, same epilogue), with fewer and with more tiles than the GPU has SMs, and with
    rows and columns that end mid-tile."""
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    from trimtab.backends.gpu import lowbit, lowbit_triton

    torch.manual_seed(0)
    out_dtype = getattr(torch, out_dtype)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for m, n, k in [(300, 80, 96), (4100, 784, 768)]:  # rows 16-byte aligned, as TMA needs
        x_q = torch.randint(-128, 128, (m, k), device="cuda", dtype=torch.int8)
        w_q = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
        col, bias = torch.rand(n, device="cuda") * 1e-5, torch.randn(n, device="cuda")  # outputs of a few units
        outs = []
        for persistent in (False, True):
            out = torch.empty((m, n), dtype=out_dtype, device="cuda")
            tiles = triton.cdiv(m, 128) * triton.cdiv(n, 128)
            lowbit_triton.qgemm_tma_kernel.fn[(min(sms, tiles) if persistent else tiles,)](
                TensorDescriptor.from_tensor(x_q, [128, 64]), TensorDescriptor.from_tensor(w_q, [128, 64]),
                TensorDescriptor.from_tensor(out, [128, 128]), col, bias, col, col, col, col, m, n, k, 0.05, IS_INT8=True,
                HAS_BIAS=True, ACT=2, OUT_Q=1 if out_dtype == torch.int8 else 0, FAST=True, RESIDUAL=0, BLOCK_M=128,
                BLOCK_N=128, BLOCK_K=64,
                GROUP_M=8, PERSISTENT=persistent, NUM_SMS=sms, num_warps=4, num_stages=3)
            outs.append(out)
        assert torch.equal(outs[0], outs[1])
        want = lowbit.qgemm_reference(x_q, w_q, col, bias, "gelu", out_dtype, 0.05 if out_dtype == torch.int8 else None)
        if out_dtype == torch.int8:
            assert (outs[1].int() - want.int()).abs().max() <= 1
        else:
            torch.testing.assert_close(outs[1].float(), want.float(), rtol=2e-3, atol=2e-3)


@needs_cuda
def test_int8_rounding_is_half_to_even_and_saturates_like_quantize_linear():
    """The GPU's int8 rounding (a mantissa trick, not rint) on ties, saturation and signs."""
    from trimtab.backends.gpu import lowbit

    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 200.0, -128.5, -129.0, -1e9, 1e9, 0.49999997,
                      -0.0, 3.4999998], device="cuda")
    for fast in (False, True):
        got = lowbit.quantize(x, 1.0, torch.int8, fast=fast)
        assert got.tolist() == lowbit.quantize_reference(x, 1.0, torch.int8).tolist()
        assert got.tolist()[:8] == [0, 2, 2, 0, -2, -2, 126, 127]


@pytest.mark.skipif(CUDA, reason="checks the CPU default")
def test_off_cuda_every_qlinear_runs_int8_without_timing():
    artifact, feeds = _int8_encoder()
    _, _, notes = _run(artifact.proto, feeds)
    assert all(v["ms"] == {} for v in notes["layer_precisions"].values())


def test_int8_with_fp16_elsewhere_runs_int8_gemms_and_matches_onnx_runtime():
    artifact, feeds = _int8_encoder(unquantized="fp16")
    assert artifact.name.endswith("-fp16") and artifact.notes["unquantized"] == "fp16"
    got, plan, notes = _run(artifact.proto, feeds)
    qlinears = _eight_bit_linears(plan)
    assert len(qlinears) == plan.notes["fusions"]["int8_linear"] == 4
    assert {plan.dtypes[s.outputs[0]] for s in qlinears} == {"float16", "int8"}
    assert not any(s.op == "trimtab.FakeQuant" for s in plan.steps)  # every Q/DQ pair became a GEMM input
    want = reference(artifact.proto, feeds)["y"]
    assert sqnr_db(got, want) >= 30.0


def test_with_fp16_elsewhere_the_layer_norms_run_in_fp16_and_write_the_int8_copy_the_int8_layers_read():
    from trimtab.build import build_int8

    block = as_model(encoder_block())
    feeds = encoder_feeds(np.random.default_rng(0), batch=8)
    ranges = minmax_ranges(block.proto, feeds)
    artifact = build_int8(block, ranges, "tensorrt", unquantized="fp16")
    got, plan, _ = _run(artifact.proto, feeds)
    norms = [s for s in plan.steps if s.op == "trimtab.LayerNorm"]
    assert norms  # (the block's first norm reads the fp32 graph input: it stays fp32)
    quantizing = [s for s in norms if len(s.outputs) == 2]
    assert quantizing and plan.notes["fusions"]["norm_quant"] == len(quantizing)
    for norm in quantizing:  # (a norm whose output only residual epilogues read writes its stats instead)
        first = "float32" if norm.attrs.get("stats_only") else "float16"
        assert plan.dtypes[norm.outputs[0]] == first and plan.dtypes[norm.outputs[1]] == "int8"
        readers = [s for s in plan.steps if norm.outputs[1] in s.inputs]
        assert readers and all(r.op == "trimtab.QLinear" and r.attrs["x_quantized"]
                               and r.attrs["x_scale"] == norm.attrs["quant_scale"] for r in readers)
        assert not any(s.op == "trimtab.QLinear" and s.inputs[0] == norm.outputs[0] for s in plan.steps)
    assert sqnr_db(got, reference(artifact.proto, feeds)["y"]) >= 30.0


def test_an_fp8_artifact_runs_fp8_gemms_and_matches_onnx_runtime():
    from trimtab.build import build_fp8

    block = as_model(encoder_block())
    feeds = encoder_feeds(np.random.default_rng(0), batch=8)
    artifact = build_fp8(block, minmax_ranges(block.proto, feeds), method_name="minmax")
    assert artifact.precision == "fp8" and artifact.name == "fp8-minmax-tensorrt-fp16"
    opset = next(o.version for o in artifact.proto.opset_import if o.domain in ("", "ai.onnx"))
    zero_points = [i for i in artifact.proto.graph.initializer if i.name.endswith("zero_point")]
    assert opset >= 19 and zero_points and all(i.data_type == 17 for i in zero_points)  # FLOAT8E4M3FN
    got, plan, notes = _run(artifact.proto, feeds)
    qlinears = _eight_bit_linears(plan)
    assert len(qlinears) == 4 and {s.attrs["element"] for s in qlinears} == {"float8_e4m3fn"}
    assert all(s.attrs["w_q"].dtype == torch.float8_e4m3fn for s in qlinears)
    assert set(v["ran"] for v in notes["layer_precisions"].values()) == {"float8_e4m3fn"}
    want = reference(artifact.proto, feeds)["y"]
    assert sqnr_db(got, want) >= 30.0


def test_an_fp8_cnn_matches_onnx_runtime_running_the_same_file():
    """fp8 Q/DQ in front of convolutions runs as fp8 fake-quant (saturate, round to e4m3)."""
    from tests.build._support import residual_cnn
    from trimtab.build import build_fp8

    x = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)
    cnn = as_model(residual_cnn())
    artifact = build_fp8(cnn, minmax_ranges(cnn.proto, {"x": x}), unquantized="fp32")
    with GpuBackend(artifact.proto, device="cpu", cache=False) as backend:
        got = backend.infer({"x": x})["y"]
        plan = backend.engine({"x": x.shape}).plan
    assert {s.attrs.get("element") for s in plan.steps if s.op == "trimtab.FakeQuant"} == {"float8_e4m3fn"}
    assert sqnr_db(got, reference(artifact.proto, {"x": x})["y"]) >= 30.0


@pytest.mark.parametrize("element", ["int8", "fp8"])
def test_with_fp16_elsewhere_a_cnn_fake_quantizes_in_fp16_without_the_casts(element):
    """Cast(fp16 -> fp32) -> Q/DQ -> Cast(-> fp16) in front of each conv becomes one fp16 FakeQuant."""
    from tests.build._support import residual_cnn
    from trimtab.build import build_fp8, build_int8

    x = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)
    cnn = as_model(residual_cnn())
    ranges = minmax_ranges(cnn.proto, {"x": x})
    artifact = build_fp8(cnn, ranges) if element == "fp8" else build_int8(cnn, ranges, "tensorrt", unquantized="fp16")
    for device in ["cpu"] + (["cuda"] if CUDA else []):
        with GpuBackend(artifact.proto, device=device, cache=False) as backend:
            got = backend.infer({"x": x})["y"]
            plan = backend.engine({"x": x.shape}).plan
        half = [s for s in plan.steps if s.op == "trimtab.FakeQuant" and s.attrs.get("half")]
        in_adds = sum(bool(s.attrs[k]) for s in plan.steps if s.op == "trimtab.QuantAdd"
                      for k in ("fq_a", "fq_b", "fq_out"))
        assert half and plan.notes["fusions"]["half_fake_quant"] == len(half) + in_adds
        producer = {o: s for s in plan.steps for o in s.outputs}
        for fake in half:
            assert plan.dtypes[fake.inputs[0]] == plan.dtypes[fake.outputs[0]] == "float16"
            assert producer[fake.inputs[0]].op != "Cast"
            assert not any(s.op == "Cast" and fake.outputs[0] in s.inputs for s in plan.steps)
        assert sqnr_db(got, reference(artifact.proto, {"x": x})["y"]) >= 30.0


@needs_cuda
@pytest.mark.parametrize("element", ["int8", "fp8"])
def test_on_cuda_the_8bit_layers_time_their_tactic_and_agree_with_the_cpu_reference(element):
    """The Triton kernels inside a whole engine: the CUDA engine against the same plan on the CPU
    (float64 reference of the same 8-bit operands), and a tactic timed for every layer."""
    from trimtab.build import build_fp8, build_int8

    block = as_model(encoder_block())
    feeds = encoder_feeds(np.random.default_rng(0), batch=8)
    ranges = minmax_ranges(block.proto, feeds)
    artifact = (build_fp8(block, ranges) if element == "fp8"
                else build_int8(block, ranges, "tensorrt", unquantized="fp16"))
    got, plan, notes = _run(artifact.proto, feeds, device="cuda")
    want = _run(artifact.proto, feeds, device="cpu")[0]
    assert len(_eight_bit_linears(plan)) == 4
    assert all(len(v["ms"]) >= 2 for v in notes["layer_precisions"].values())
    assert sqnr_db(got, want) >= 30.0


def test_a_kernel_choice_that_cannot_run_is_left_out_and_all_failing_raises(caplog):
    """A GPU without fp8 tensor cores (say) cannot build the fp8 kernel: the float path is timed alone."""
    from trimtab.backends.gpu.fused import _runnable

    calls = []
    paths = {"float8_e4m3fn": lambda x: 1 / 0, "float16": lambda x: calls.append(x)}
    with caplog.at_level("WARNING"):
        kept = _runnable(paths, (3,))
    assert list(kept) == ["float16"] and calls == [3, 3]  # warmed up twice
    assert "float8_e4m3fn" in caplog.text and "ZeroDivisionError" in caplog.text
    with pytest.raises(ZeroDivisionError):
        _runnable({"a": lambda: 1 / 0, "b": lambda: 1 / 0}, ())


def test_a_kernel_choice_is_made_once_on_the_first_call_and_only_where_the_input_fits(monkeypatch):
    from trimtab.backends.gpu import fused

    timed = []
    monkeypatch.setattr(fused, "_fastest", lambda paths, args, ms: timed.append(args) or ms.update(b=1.0) or "b")
    run = fused._chosen_on_first_call({"a": lambda x: ("a", x), "b": lambda x: ("b", x)})
    assert run(1) == ("b", 1) and run(2) == ("b", 2) and timed == [(1,)]
    assert run.choice == {"chosen": "b", "ms": {"b": 1.0}}
    unfit = fused._chosen_on_first_call({"a": lambda x: ("a", x), "b": lambda x: ("b", x)}, fits=lambda x: False)
    assert unfit(3) == ("a", 3) and timed == [(1,)]


def test_a_quantized_residual_add_is_one_step_with_the_conv_bias_and_the_fake_quants():
    """conv2 (no activation) -> FakeQuant -> Add(shortcut) -> Relu -> FakeQuant: one QuantAdd,
    conv2 without its bias (the QuantAdd adds it), the same values as the Q/DQ file."""
    from tests.build._support import residual_cnn
    from trimtab.build import build_int8

    x = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)
    cnn = as_model(residual_cnn())
    artifact = build_int8(cnn, minmax_ranges(cnn.proto, {"x": x}), "tensorrt", unquantized="fp16")
    for device in ["cpu"] + (["cuda"] if CUDA else []):
        with GpuBackend(artifact.proto, device=device, cache=False) as backend:
            got = backend.infer({"x": x})["y"]
            plan = backend.engine({"x": x.shape}).plan
        (add,) = [s for s in plan.steps if s.op == "trimtab.QuantAdd"]
        assert plan.notes["fusions"]["residual_quant"] == 1 and not any(s.op in ("Add", "Relu") for s in plan.steps)
        assert add.attrs["fq_a"] and add.attrs["fq_out"] and add.attrs["relu"] and add.attrs["fq_b"] is None
        conv = next(s for s in plan.steps if add.inputs[0] in s.outputs)
        assert conv.op == "trimtab.Conv" and len(conv.inputs) == 2
        assert add.inputs[2] and plan.constants[add.inputs[2]].numel() == 8  # conv2's bias, one per channel
        assert sqnr_db(got, reference(artifact.proto, {"x": x})["y"]) >= 30.0


@needs_cuda
@pytest.mark.parametrize("element", ["int8", "float8_e4m3fn"])
def test_the_quant_add_pass_gives_the_unfused_steps_values_bit_for_bit(element):
    from trimtab.backends.gpu.ops import KERNELS, NodeSpec

    torch.manual_seed(0)
    shape = (4, 24, 9, 7)
    a, b = (torch.randn(shape, device="cuda").half().contiguous(memory_format=torch.channels_last) for _ in range(2))
    bias_a, bias_b = torch.randn(24, device="cuda").half(), torch.randn(24, device="cuda").half()
    attrs = {"fq_a": (0.03, element), "fq_b": (0.05, element), "fq_out": (0.04, element), "relu": True}
    make = KERNELS["trimtab.QuantAdd"]
    fused = make(NodeSpec("trimtab.QuantAdd", "t", attrs, [None] * 4, [shape, shape, (24,), (24,)], device="cuda"))
    unfused = make(NodeSpec("trimtab.QuantAdd", "t", attrs, [None] * 4, [shape, shape, (24,), (24,)], device="cpu"))
    for args in [(a, b, bias_a, bias_b), (a, b, bias_a, None), (a, b, None, None)]:
        got, want = fused(*args), unfused(*args)
        assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want)
    plain = make(NodeSpec("trimtab.QuantAdd", "t", {"fq_a": None, "fq_b": None, "fq_out": None, "relu": False},
                          [None] * 4, [shape, shape, None, None], device="cuda"))
    assert torch.equal(plain(a, b), a + b)


def test_a_kernel_choice_is_timed_once_per_size_class_and_shared_by_the_backends_engines(monkeypatch):
    """Evaluating a text model builds an engine per padded length; a choice timed at 46 tokens is
    taken as it is at 54 (both round up to 64), and timed again at 65."""
    from trimtab.backends.gpu import fused
    from trimtab.backends.gpu.ops import NodeSpec

    timed = []

    def fake_fastest(paths, args, timings):
        timed.append(args)
        timings.update({"int8": 0.1, "float16": 0.3})
        return "int8"

    monkeypatch.setattr(fused, "_fastest", fake_fastest)
    shared: dict = {}
    paths = {"int8": lambda x: x, "float16": lambda x: x}

    def node(tokens):
        return NodeSpec("trimtab.QLinear", "ffn", {}, [None], [(16, tokens, 384)], device="cuda", choices=shared)

    assert node(46).choice_key("tactic") == ("tactic", "trimtab.QLinear", "ffn", ((16, 64, 512),))
    first, second, third = ({"chosen": None, "ms": {}} for _ in range(3))
    fused._choose(first, paths, (1,), node(46), "tactic")
    fused._choose(second, paths, (2,), node(54), "tactic")
    assert first == second == {"chosen": "int8", "ms": {"int8": 0.1, "float16": 0.3}} and timed == [(1,)]
    fused._choose(third, paths, (3,), node(65), "tactic")
    assert third["chosen"] == "int8" and timed == [(1,), (3,)]
    alone = {"chosen": None, "ms": {}}
    fused._choose(alone, paths, (4,), NodeSpec("trimtab.QLinear", "ffn", {}, [None], [(16, 46, 384)]), "tactic")
    assert timed[-1] == (4,)  # no shared choices (a kernel made outside an engine): timed


@pytest.mark.parametrize("element", ["int8", "fp8"])
def test_residual_adds_move_into_the_8bit_epilogues_and_the_layer_norm_between_writes_only_its_stats(element, monkeypatch):
    """Both residual adds of the encoder block go into the epilogue of the GEMM before them, and
    the LayerNorm between them (read by the FFN's 8-bit copy and by the down-projection's residual
    add) writes (mean, 1 / std) per row instead of its output, which the down-projection
    recomputes: the values are the unfused plan's, bit for bit, and ONNX Runtime's within 30 dB."""
    from trimtab.backends.gpu import fuse_int8
    from trimtab.build import build_fp8, build_int8

    block = as_model(encoder_block())
    feeds = encoder_feeds(np.random.default_rng(0), batch=8)
    ranges = minmax_ranges(block.proto, feeds)
    artifact = build_fp8(block, ranges) if element == "fp8" else build_int8(block, ranges, "tensorrt", unquantized="fp16")
    got, plan, _ = _run(artifact.proto, feeds)
    assert plan.notes["fusions"]["residual_epilogue"] == 2 and plan.notes["fusions"]["deferred_norm"] == 1
    assert not any(s.op == "Add" for s in plan.steps)
    (norm,) = [s for s in plan.steps if s.op == "trimtab.LayerNorm" and s.attrs.get("stats_only")]
    stats, copy = norm.outputs
    assert plan.dtypes[stats] == "float32" and plan.shapes[stats] == [8, feeds["x"].shape[1], 2]
    (down,) = [s for s in plan.steps if s.op == "trimtab.QLinear" and s.attrs.get("residual") == "norm"]
    assert down.inputs[3:] == [norm.inputs[0], stats, norm.inputs[1], norm.inputs[2]] and down.outputs == ["y_fp16"]
    (out_proj,) = [s for s in plan.steps if s.op == "trimtab.QLinear" and s.attrs.get("residual") == "add"]
    assert out_proj.outputs[0] == norm.inputs[0] and len(norm.inputs) == 3  # the norm's own residual add moved
    assert sqnr_db(got, reference(artifact.proto, feeds)["y"]) >= 30.0
    monkeypatch.setattr(fuse_int8, "fuse_residual_add", lambda plan: 0)
    monkeypatch.setattr(fuse_int8, "defer_layer_norm", lambda plan: 0)
    unfused, plan, _ = _run(artifact.proto, feeds)
    assert "residual_epilogue" not in plan.notes["fusions"] and np.array_equal(got, unfused)


def test_a_layer_norm_output_read_by_anything_else_is_written():
    """The fp32 int8 artifact keeps ONNX LayerNormalization (no deferral), but its residual Adds
    still move into the epilogues; an output read by a float op besides the GEMM is not deferred."""
    from trimtab.build import build_int8

    block = as_model(encoder_block())
    feeds = encoder_feeds(np.random.default_rng(0), batch=8)
    artifact = build_int8(block, minmax_ranges(block.proto, feeds), "tensorrt")
    got, plan, _ = _run(artifact.proto, feeds)
    assert plan.notes["fusions"]["residual_epilogue"] == 2 and "deferred_norm" not in plan.notes["fusions"]
    assert not any(s.attrs.get("stats_only") for s in plan.steps)
    assert sqnr_db(got, reference(artifact.proto, feeds)["y"]) >= 30.0


@needs_cuda
@pytest.mark.parametrize("element", ["int8", "fp8"])
@pytest.mark.parametrize("tma", [False, True])
def test_the_residual_epilogue_gives_the_values_of_the_separate_gemm_and_layer_norm(element, tma):
    """On CUDA: the GEMM + residual LayerNorm kernels against the unfused kernels (the GEMM writing
    fp16, the norm adding the residual and writing its output), for a plain residual and for one
    recomputed from a stats-only norm; rows and columns that end mid-tile included."""
    from trimtab.backends.gpu import lowbit
    from trimtab.backends.gpu.norm_triton import layer_norm

    torch.manual_seed(0)
    dtype = torch.int8 if element == "int8" else lowbit.FP8
    for m, n, k in [(300, 80, 96), (4100, 768, 768)]:
        x_q = lowbit.quantize(torch.randn(m, k, device="cuda"), 0.02, dtype)
        w_q = lowbit.quantize(torch.randn(n, k, device="cuda"), 0.02, dtype)
        col, bias = torch.full((n,), 4e-4, device="cuda"), torch.randn(n, device="cuda").half()
        s = (torch.randn(m, n, device="cuda") * 3 + 1).half()  # a previous norm's input (pre-norm sum)
        gamma, beta = (torch.rand(n, device="cuda") + 0.5).half(), torch.randn(n, device="cuda").half()
        use_tma = tma and lowbit.tma_ok(x_q, w_q, torch.float16)
        y_prev, _ = layer_norm(s, gamma, beta, 1e-12, quant=(0.05, dtype))
        stats, copy = layer_norm(s, gamma, beta, 1e-12, quant=(0.05, dtype), stats_only=True)
        # (the two compiled variants may contract the fp32 arithmetic differently: a code one step off, rarely)
        assert stats.shape == (m, 2) and (copy.float() != _.float()).float().mean() < 1e-4
        plain = lowbit.qgemm(x_q, w_q, col, bias, None, torch.float16, tma=use_tma)
        want = plain + y_prev
        got_add = lowbit.qgemm(x_q, w_q, col, bias, None, torch.float16, tma=use_tma, residual=(y_prev,))
        got_norm = lowbit.qgemm(x_q, w_q, col, bias, None, torch.float16, tma=use_tma, residual=(s, stats, gamma, beta))
        assert torch.equal(got_add, want)
        # the recomputed norm output may differ from the norm kernel's by an fp32 contraction: one fp16 step, rarely
        assert (got_norm != want).float().mean() < 1e-3
        torch.testing.assert_close(got_norm, want, rtol=1e-3, atol=1e-3)
        # the epilogue's recomputation against the CPU one on the same GEMM output (fp8 sums in the
        # tensor cores are not float64's): at most one fp16 step of either operand apart
        reference_out = plain.cpu() + lowbit.residual_value((s.cpu(), stats.cpu(), gamma.cpu(), beta.cpu()), torch.float16)
        size = (plain.abs().float() + y_prev.abs().float()).cpu()
        diff = (got_norm.cpu().float() - reference_out.float()).abs()
        assert (diff <= size * 2.0 ** -9 + 1e-3).all() and (diff > 0).float().mean() < 1e-2


@needs_cuda
@pytest.mark.parametrize("act,out_q,residual", [(None, False, 0), ("gelu", True, 0), ("relu", False, 0),
                                                (None, False, 1), (None, False, 2)])
def test_the_async_int8_kernel_gives_the_triton_kernels_values(act, out_q, residual):
    """The Gluon int8 GEMM (`lowbit_gluon`, warp-specialized ping-pong) against the Triton one, same
    operands and epilogue, with rows and columns that end mid-tile: the same int32 sums and fp32
    epilogue, so the same outputs but for an fp32 contraction the compilers may place differently."""
    from trimtab.backends.gpu import lowbit

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the async int8 kernel is for Hopper")
    torch.manual_seed(0)
    for m, n, k in [(300, 80, 96), (4100, 768, 768), (1000, 3072, 768)]:
        x_q, w_q, col, bias, res = _random_int8_layer(m, n, k, residual)
        out_dtype, out_scale = (torch.int8, 0.05) if out_q else (torch.float16, None)
        outs = {}
        for async_int8 in (False, True):
            lowbit._INT8_KERNELS.clear()
            outs[async_int8] = lowbit.qgemm(x_q, w_q, col, bias, act, out_dtype, out_scale, tma=True, residual=res,
                                            async_int8=async_int8)
        assert lowbit._INT8_KERNELS and set(lowbit._INT8_KERNELS.values()) == {"gluon"}  # (quick tune: untimed)
        if out_q:
            diff = (outs[True].int() - outs[False].int()).abs()
            assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-4
        else:
            torch.testing.assert_close(outs[True], outs[False], rtol=1e-3, atol=1e-3)
            assert (outs[True] != outs[False]).float().mean() < 1e-3


@needs_cuda
@pytest.mark.parametrize("residual", [0, 2])
def test_every_pingpong_config_gives_the_triton_kernels_values(residual, monkeypatch):
    """Each tile config of the ping-pong kernel (ring depth, tile width), launched directly, on
    shapes where a program takes one tile, an odd number of tiles (the second warpgroup idles at
    the end) or many, and where K and the last tile end mid-block: the Triton kernel's outputs."""
    from trimtab.backends.gpu import lowbit, lowbit_gluon

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the ping-pong kernel is for Hopper")
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for m, n, k in [(100, 64, 208), (3 * 128 * sms + 40, 192, 784), (2000, 768, 3072)]:
        a, w, col, bias, res = _random_int8_layer(m, n, k, residual)
        act, out_dtype, out_scale = (None, torch.float16, 1.0) if residual else ("gelu", torch.int8, 0.05)
        want = lowbit.qgemm(a, w, col, bias, act, out_dtype, None if residual else out_scale, tma=True, residual=res,
                            async_int8=False)
        res_args = lowbit._residual_args(res, col)
        flags = dict(HAS_BIAS=True, ACT=lowbit.ACTS[act], OUT_Q=0 if residual else 1, RESIDUAL=residual)
        out = torch.empty_like(want)
        monkeypatch.delenv("TRIMTAB_QUICK_TUNE", raising=False)  # every config, not the quick first one
        runs = lowbit_gluon.config_runs(a, w, out, col, bias, res_args, out_scale, flags, sms)
        assert len(runs) >= (1 if residual else 3)
        for config, run in runs:
            meta = config.kwargs
            out.zero_()
            run()
            if residual:
                torch.testing.assert_close(out, want, rtol=1e-3, atol=1e-3)
                assert (out != want).float().mean() < 1e-3, meta
            else:
                assert (out.int() - want.int()).abs().max() <= 1 and (out != want).float().mean() < 1e-4, meta


def _random_int8_layer(m: int, n: int, k: int, residual: int) -> tuple:
    """Random CUDA operands of an int8 layer [m, k] x [n, k]^T (x_q, w_q, column scales, fp16
    bias) and its residual: None (0), (z,) (1) or a deferred LayerNorm's (z, stats, gamma, beta) (2)."""
    from trimtab.backends.gpu.norm_triton import layer_norm

    x_q = torch.randint(-128, 128, (m, k), device="cuda", dtype=torch.int8)
    w_q = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
    col, bias = torch.rand(n, device="cuda") * 2e-5, torch.randn(n, device="cuda").half()
    if not residual:
        return x_q, w_q, col, bias, None
    z = (torch.randn(m, n, device="cuda") * 3).half()
    gamma, beta = (torch.rand(n, device="cuda") + 0.5).half(), torch.randn(n, device="cuda").half()
    stats, _ = layer_norm(z, gamma, beta, 1e-12, quant=(0.05, torch.int8), stats_only=True)
    return x_q, w_q, col, bias, (z,) if residual == 1 else (z, stats, gamma, beta)
