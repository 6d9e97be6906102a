"""What a run has finished, kept in its run folder (`state/`) so a killed run resumes without
repeating it: `trimtab tune ... --out SAME_DIR`.

    state/identity.json      what the results below depend on: model, data, task, metric, target
    state/eval-<sha256>.json the EvalResult of one artifact (any candidate or search step)
    state/reference.npz      the fp32 outputs on the validation set (new plans are compared to them)
    state/<key>.json         search records (ranking, measured costs, verified steps) and the bench
                             (bench.json: every candidate's timing and peak memory, keyed by their sha256)

Every file is written atomically, so after a kill each is either whole or absent. A state whose
identity differs from the current run's is stale: it is removed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from trimtab._io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunState:
    def __init__(self, root: str | Path, identity: dict[str, Any]) -> None:
        self.folder = Path(root) / "state"
        self.identity = json.loads(json.dumps(identity, sort_keys=True))
        previous = self._read_json(self.folder / "identity.json")
        if previous is not None and previous != self.identity:
            log.info("run state in %s belongs to another model or data; starting afresh", self.folder)
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / "identity.json", self.identity)

    # --- evaluations --------------------------------------------------------------------------
    def evaluation(self, artifact_sha: str):
        """The saved EvalResult of the artifact with this sha256, if it was evaluated."""
        from trimtab.measure import EvalResult

        data = self._read_json(self._path(f"eval-{artifact_sha[:32]}"))
        if not data or data.get("artifact_sha256") != artifact_sha:
            return None
        try:
            return EvalResult.from_dict(data["result"])
        except (KeyError, TypeError, ValueError):
            return None

    def save_evaluation(self, artifact_sha: str, result) -> None:
        atomic_write_json(self._path(f"eval-{artifact_sha[:32]}"), {"artifact_sha256": artifact_sha, "result": result.to_dict()})

    def reference_outputs(self, artifact_sha: str):
        """The fp32 Outputs saved by `save_reference_outputs`, or None."""
        from trimtab.measure.evaluate import Outputs

        path = self.folder / "reference.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["__sha256__"]) != artifact_sha:
                    return None
                arrays = {key[4:]: data[key] for key in data.files if key.startswith("out:")}
                labels = data["__labels__"] if "__labels__" in data.files else None
                return Outputs(arrays, str(data["__output__"]), labels, str(data["__name__"]))
        except (OSError, KeyError, ValueError):
            return None

    def save_reference_outputs(self, artifact_sha: str, outputs) -> None:
        import io

        arrays = {f"out:{key}": value for key, value in outputs.arrays.items()}
        arrays.update(__sha256__=np.array(artifact_sha), __output__=np.array(outputs.output_name),
                      __name__=np.array(outputs.name))
        if outputs.labels is not None:
            arrays["__labels__"] = outputs.labels
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.folder / "reference.npz", buffer.getvalue())

    # --- free-form records ----------------------------------------------------------------------
    def record(self, key: str) -> Any:
        return self._read_json(self._path(key))

    def save_record(self, key: str, value: Any) -> None:
        atomic_write_json(self._path(key), value)

    def _path(self, key: str) -> Path:
        return self.folder / f"{_SAFE.sub('_', key)}.json"

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def damaged_files(root: str | Path) -> list[str]:
    """Finished files under a run folder that are not whole (JSON that does not parse, ONNX that
    does not load and check, npz that does not open), as 'relative/path: ErrorType'. Hidden files
    are skipped: they are temporaries of writes a kill interrupted, never read."""
    import onnx

    from trimtab.load.onnx_file import read_onnx

    root = Path(root)
    problems = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".onnx":  # by path: an artifact over 2 GB keeps its data beside it
                read_onnx(path)  # external data inside the folder and as long as declared
                onnx.checker.check_model(str(path))
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    [data[key] for key in data.files]
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the finding
            problems.append(f"{path.relative_to(root)}: {type(exc).__name__}")
    return problems
