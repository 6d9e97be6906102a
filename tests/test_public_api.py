"""The public surface: pinned names, and `import trimtab` stays light."""

import subprocess
import sys

import trimtab

EXPECTED = [
    "BackendUnavailableError",
    "BudgetNotMetError",
    "CalibrationError",
    "CalibrationMethod",
    "Dataset",
    "Int8Flavour",
    "InvalidDataError",
    "InvalidModelError",
    "Model",
    "Precision",
    "PrecisionPlan",
    "Summary",
    "Target",
    "Task",
    "TrimtabError",
    "TuneConfig",
    "__version__",
    "build_bf16",
    "build_fp16",
    "build_fp32",
    "build_int8",
    "calibrate",
    "get_example",
    "list_examples",
    "load_model",
    "tune",
]


def test_all_is_pinned_and_sorted():
    assert trimtab.__all__ == EXPECTED
    assert trimtab.__all__ == sorted(trimtab.__all__)


def test_every_public_name_resolves():
    for name in trimtab.__all__:
        assert getattr(trimtab, name) is not None, name


def test_import_is_lean():
    code = (
        "import sys, trimtab, trimtab.cli.main\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'triton', 'tensorrt', 'onnx', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"import trimtab pulled in: {result.stdout.strip()}"


def test_errors_carry_hints():
    error = trimtab.InvalidDataError("folder 'x' is empty", hint="put images in it")
    assert isinstance(error, trimtab.TrimtabError)
    assert "hint: put images in it" in str(error)


def test_tune_is_the_function_not_a_module():
    import trimtab.pipeline  # noqa: F401  (importing a submodule must not shadow the API name)

    assert callable(trimtab.tune)
