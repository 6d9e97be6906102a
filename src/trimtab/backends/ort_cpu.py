"""ONNX Runtime on the CPU: the embedded default backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from trimtab.backends.base import Backend
from trimtab.errors import InvalidModelError


# ONNX Runtime's basic-level WeightBiasQuantization quantizes float Conv/MatMul weights whenever
# the node sits between Q/DQ nodes. That silently turns a node a precision plan keeps in fp32 into
# int8, and for depthwise convolutions it picks a per-tensor axis: on EfficientNet-Lite0 with its
# depthwise convs kept fp32 the logits' SQNR fell from 20.4 dB to 6.7 dB (ORT 1.32). A plan must
# mean what it says, so the transformer is off.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


class OrtCpuBackend(Backend):
    """Runs an artifact with onnxruntime's CPUExecutionProvider.

    `threads` sets intra-op threads (None = ONNX Runtime's default, all cores). Graph
    optimisation is on (ORT_ENABLE_ALL) so Q/DQ pairs fuse into integer kernels, as in deployment.
    `extra_outputs` exposes intermediate tensors (used by calibration and explain).
    """

    name = "ort-cpu"

    def __init__(
        self,
        model,
        *,
        threads: int | None = None,
        optimize: bool = True,
        extra_outputs: list[str] | None = None,
        spin: bool = True,
    ) -> None:
        super().__init__(model)
        self.spin = spin
        self.threads = threads
        self.optimize = optimize
        self.extra_outputs = list(extra_outputs or [])
        self._session = None
        self._large_file = None  # a >2 GB proto written with external data, for ONNX Runtime to read by path

    def _prepare(self) -> None:
        self._session = self._new_session(self._session_options())
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self._input_meta = {
            i.name: (list(i.shape), _ORT_TYPES.get(i.type, np.float32)) for i in self._session.get_inputs()
        }

    def _session_options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Thread-pool spinning stays at ONNX Runtime's default (on), as deployed; several sessions
        # in one process (interleaved benchmarking) must then not run back to back: an idle
        # session's spinning threads steal cores (EfficientNet-Lite0 int8/fp32 read 1.20x).
        # `bench_interleaved` pauses between candidates for that; `spin=False` turns it off.
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return options

    def _new_session(self, options):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(
                self._model_source(), options, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise InvalidModelError(f"ONNX Runtime could not load the model: {exc}", hint=self._load_hint()) from exc

    def _load_hint(self) -> str:
        """The fix for a file this provider cannot load: a bf16 artifact (no bf16 CPU kernels)
        needs the gpu target; anything else, a check of the file."""
        try:  # (only after a failure: the graph alone, without external weights)
            model = onnx.load(str(self.model), load_external_data=False) if isinstance(self.model, (str, Path)) \
                else self.model
            bf16 = _has_bf16(model.graph)
        except Exception:  # noqa: BLE001  (an unreadable file gets the general hint)
            bf16 = False
        if bf16:
            return "this is a bf16 artifact: ONNX Runtime's CPU provider has no bf16 kernels; run it with --target gpu"
        return "check the file with `python -m onnx.checker` or rebuild the artifact"

    def profile_node_times(self, feeds: dict[str, np.ndarray], runs: int = 10) -> dict[str, float]:
        """Milliseconds per run (median) spent in each kernel, keyed by ONNX Runtime's node name after its
        graph optimisations (fused nodes carry suffixes such as `_token_12` or `_nchwc`; see
        trimtab.search.cost). A separate profiling session is used; the timed one is untouched.
        The first run is a warm-up and is not counted."""
        import json
        import tempfile

        self.prepare()
        options = self._session_options()
        with tempfile.TemporaryDirectory(prefix="trimtab-profile-") as folder:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / "ort")
            session = self._new_session(options)
            inputs = {name: feeds[name] for name in self.input_names}
            session.run(None, inputs)
            for _ in range(runs):
                session.run(None, inputs)
            events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
        calls: dict[str, list[float]] = {}
        for event in events:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                calls.setdefault(event["name"][: -len("_kernel_time")], []).append(event["dur"] / 1000.0)
        # The first call of each kernel is the warm-up run; the median of the rest resists the
        # odd preempted call (a mean would let one 2-core hiccup reorder the search).
        return {name: float(np.median(times[1:])) for name, times in calls.items() if len(times) > 1}

    def _model_source(self):
        """What InferenceSession reads: a path, serialised bytes, or, over protobuf's 2 GB limit,
        the path of a copy written with external data into a temporary folder (kept until close)."""
        from trimtab._onnx_io import initializer_bytes, serialised
        from trimtab.load.onnx_file import PROTOBUF_LIMIT

        if isinstance(self.model, (str, Path)):
            return str(self.model)
        if self._large_file is None and initializer_bytes(self.model) <= PROTOBUF_LIMIT:
            data = serialised(self._with_extra_outputs())
            if data is not None:
                return data
        if self._large_file is None:
            self._large_file = self._write_large()
        return str(self._large_file)

    def _with_extra_outputs(self):
        if not self.extra_outputs:
            return self.model
        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(self.model)
        known = {o.name for o in proto.graph.output}
        proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in self.extra_outputs if n not in known)
        return proto

    def _write_large(self) -> Path:
        import shutil
        import tempfile
        import weakref

        import onnx

        from trimtab._onnx_io import split, write_split

        skeleton, pairs = split(self.model)  # the proto itself is left as it is
        known = {o.name for o in skeleton.graph.output}
        skeleton.graph.output.extend(onnx.ValueInfoProto(name=n) for n in self.extra_outputs if n not in known)
        folder = Path(tempfile.mkdtemp(prefix="trimtab-ort-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
        return write_split(skeleton, pairs, folder / "model.onnx")

    def _infer(self, feeds):
        outputs = self._session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs))

    def _close(self) -> None:
        self._session = None
        if self._large_file is not None:
            self._cleanup()
            self._large_file = None


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _has_bf16(graph: onnx.GraphProto) -> bool:
    """Whether the graph holds bf16 weights or casts to bf16 (a `build_bf16` artifact)."""
    return any(init.data_type == onnx.TensorProto.BFLOAT16 for init in graph.initializer) or any(
        node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.BFLOAT16 for a in node.attribute)
        for node in graph.node)
