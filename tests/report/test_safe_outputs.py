"""Safe outputs (issue 6): node and tensor names are model data, never file names. A model whose
names are `../../evil`, `<script>` and worse is tuned; every file lands inside the run folder
under a safe name, and the report escapes every name. (No remote resources in the report:
tests/report/test_report.py.)"""

import re

import onnx
import pytest

import trimtab
from tests.search._chain import write_chain
from trimtab.explain.diagnostics import slug

HOSTILE_NAMES = ["../../evil", "<script>alert(1)</script>", "/etc/passwd", "a\\b:c*?\"|", "..", "con",
                 "\u202eexe.txt", "x" * 300, "\"'><img src=x onerror=alert(1)>"]
SAFE_FILE = re.compile(r"^\.?[A-Za-z0-9_.+-]+$")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_slug_of_a_hostile_name_is_a_safe_file_name(name):
    text = slug(name)
    assert re.fullmatch(r"[a-z0-9-]{1,64}", text) and text not in (".", "..")


@pytest.mark.slow
def test_hostile_node_names_never_become_paths_or_markup(tmp_path):
    path = tmp_path / "chain.onnx"
    data = write_chain(path, width=32, samples=64)
    model = onnx.load(path)
    renames = {}
    for i, node in enumerate(model.graph.node):
        node.name = HOSTILE_NAMES[i % len(HOSTILE_NAMES)] + f"#{i}"
        for j, output in enumerate(node.output):
            if output not in {o.name for o in model.graph.output}:
                renames[output] = HOSTILE_NAMES[(i + 3) % len(HOSTILE_NAMES)] + f"/{i}"
    for node in model.graph.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames.get(x, x) for x in node.output]
    onnx.save(model, path)
    run = tmp_path / "run"
    trimtab.tune(path, data, data, trimtab.TuneConfig(task="generic", budget=0.2, methods=("minmax",),
                                                     include_fp16=False, bench_seconds=0.2, measure_memory=False),
                 out=run)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    outside = [p for p in files if not (p.is_relative_to(run) or p.parent == tmp_path)]
    assert not outside
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    for p in run.rglob("*"):
        assert SAFE_FILE.match(p.name), p
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert re.findall(r"<img src=\"([a-z]+):", html) == ["data"] * html.count("<img ")  # plots inline only
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the name is shown, escaped
