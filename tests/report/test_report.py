import json
import re
import xml.etree.ElementTree as ET

import pytest

from tests.report.conftest import ESCAPED, HOSTILE, candidate, hostile_summary, make_run_folder
from trimtab.errors import TrimtabError
from trimtab.report import (
    CandidateSummary,
    Summary,
    render_report,
    render_run_folder,
    write_report,
    write_report_for_run,
)
from trimtab.report.charts import Bar, Point, bar_chart_svg, nice_ticks, pareto_front, pareto_svg

SECTIONS = ("decision", "pareto", "candidates", "search", "scenario", "notes", "sensitivity", "layers",
            "calibration", "lint", "plan", "reproduce")


def _summary(name="int8-entropy"):
    candidate = CandidateSummary(
        name=name, precision="int8", metric_value=0.95, metric_drop=0.5, metric_ci95=[0.0, 1.2],
        throughput_per_s=200.0, latency_ms={"p50": 40.0, "p90": 42.0, "p99": 50.0}, batch_size=8,
        model_bytes=5_000_000, peak_mem_bytes=60_000_000, artifact="models/x.onnx", within_budget=True,
        speedup_vs_fp32=2.4, speedup_spread=[2.2, 2.6],
    )
    return Summary(
        trimtab_version="0.1.0", model={"path": "m.onnx", "sha256": "ab" * 32},
        target={"backend": "ort-cpu", "device": "cpu"}, task="classify", metric="top1", budget=1.0,
        baseline={"name": "fp32", "metric_value": 0.955}, candidates=[candidate], chosen=name,
        reason="because", command="trimtab demo",
    )


def _section(html: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def _svgs(html: str) -> list[str]:
    return re.findall(r"<svg .*?</svg>", html, re.S)


def test_summary_round_trips_through_json(tmp_path):
    summary = _summary()
    path = summary.save(tmp_path / "summary.json")
    data = json.loads(path.read_text())
    for key in ("trimtab_version", "model", "target", "task", "metric", "budget", "baseline", "candidates",
                "chosen", "reason"):
        assert key in data
    assert Summary.load(path) == summary


def test_report_escapes_model_derived_strings():
    html = render_report(_summary(name=HOSTILE))
    assert HOSTILE not in html
    assert ESCAPED in html
    assert "http://" not in html and "https://" not in html


# --- Pareto front ----------------------------------------------------------------------------------
def test_pareto_front_of_a_known_set():
    points = [
        Point("fp32", 100.0, 0.0),
        Point("fp16", 80.0, 0.0),  # slower than fp32 at the same drop: dominated
        Point("a", 300.0, 0.5),
        Point("b", 290.0, 0.8),  # slower and worse than a: dominated
        Point("c", 340.0, 3.0),
        Point("d", 400.0, 5.0),
        Point("e", 350.0, 5.0),  # slower than d at the same drop: dominated
        Point("f", 400.0, 5.0),  # equal to d: neither dominates, both stay
    ]
    assert pareto_front(points) == ["fp32", "a", "c", "d", "f"]
    assert pareto_front([]) == []
    assert pareto_front([Point("only", 1.0, 9.0)]) == ["only"]


def test_pareto_svg_marks_the_chosen_point_and_draws_the_front_as_a_staircase():
    points = [Point("fp32", 100.0, 0.0), Point("a", 300.0, 0.5), Point("slow", 50.0, 2.0)]
    svg = pareto_svg(points, "a", 1.0, x_label="throughput", y_label="drop")
    ET.fromstring(svg)  # well-formed
    assert svg.count('class="point"') == 3
    assert svg.count('class="chosen"') == 1
    path = re.search(r'class="front" d="([^"]+)"', svg).group(1)
    assert path.startswith("M") and path.count("V") == 1 and path.count("H") == 1  # fp32 -> a, slow left out
    assert "budget 1 pt" in svg


def test_nice_ticks_are_round():
    assert nice_ticks(0.0, 430.0, 6) == [0.0, 100.0, 200.0, 300.0, 400.0]
    assert nice_ticks(-0.5, 5.5, 5) == [-2.0, 0.0, 2.0, 4.0]
    assert nice_ticks(0.0, 0.07, 5) == [0.0, 0.02, 0.04, 0.06]
    assert nice_ticks(3.0, 3.0) == [3.0]


def test_bar_chart_draws_negative_and_infinite_values_within_the_picture():
    svg = bar_chart_svg([Bar("a", 2.0), Bar("b", -0.5), Bar(HOSTILE, float("inf"))], value_label="gain")
    ET.fromstring(svg)
    widths = [float(w) for w in re.findall(r'class="bar" x="[^"]+" y="[^"]+" width="([^"]+)"', svg)]
    assert len(widths) == 3 and all(w > 0 for w in widths)
    assert ">inf<" in svg and ESCAPED in svg and HOSTILE not in svg


# --- the whole page from a run folder ----------------------------------------------------------------
def test_run_folder_report_has_every_section_and_escapes_every_hostile_name(run_folder):
    html = render_run_folder(run_folder)
    assert "<script" not in html.lower() and HOSTILE not in html
    for anchor in SECTIONS:
        assert ESCAPED in _section(html, anchor), anchor
        assert f'href="#{anchor}"' in html
    assert "data:image/png;base64," in _section(html, "calibration")
    for svg in _svgs(html):
        ET.fromstring(svg)
    sensitivity = _section(html, "sensitivity")
    assert sensitivity.count('class="bar"') == 15  # the top 15 of 18 ranked groups
    assert 'class="sensitivity-chart"' in sensitivity and ESCAPED in sensitivity
    lint = _section(html, "lint")
    assert "outlier-range" in lint and f"keep {ESCAPED} in fp32" in lint and "ratio=42.5" in lint
    assert "strict" in _section(html, "decision") and "1200" in _section(html, "decision")
    assert _section(html, "search").count("<tr") == 3  # header + two steps
    assert "2 per-node exception(s)" in _section(html, "plan")
    assert "trimtab tune model.onnx" in _section(html, "reproduce")


def test_report_is_self_contained(run_folder):
    html = render_run_folder(run_folder)
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<(script|link|iframe|object|embed)\b", html, re.I)
    assert re.findall(r'src="([^"]{0,22})', html) == ["data:image/png;base64,"] * 2
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_plot_captions_name_the_tensor_through_the_diagnostics(run_folder):
    calibration = _section(render_run_folder(run_folder), "calibration")
    assert f"<figcaption><code>{ESCAPED}</code></figcaption>" in calibration
    assert "<figcaption><code>/_blocks.1/Clip_output_0</code></figcaption>" in calibration


def test_missing_optional_files_are_noted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    hostile_summary().save(run / "summary.json")
    html = render_run_folder(run)
    for name in ("sensitivity.json", "layers.json", "lint.json", "plan.json", "calibration/coverage.json",
                 "calibration/diagnostics.json"):
        assert f"No {name} in the run folder" in html
    assert "No histogram plots" in html
    assert 'class="pareto-plot"' in html


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"format": "other"}', b"\xff\xfe\x00", b""])
def test_corrupt_optional_files_are_skipped_with_a_note(run_folder, content):
    for name in ("sensitivity.json", "layers.json", "lint.json", "plan.json", "calibration/coverage.json",
                 "calibration/diagnostics.json"):
        (run_folder / name).write_bytes(content)
    (run_folder / "calibration" / "plots" / "03-broken.png").write_bytes(b"GIF89a not a png")
    html = render_run_folder(run_folder)
    for name in ("sensitivity.json", "layers.json", "lint.json", "plan.json", "calibration/coverage.json",
                 "calibration/diagnostics.json"):
        assert f"{name} could not be read or shown" in html, name
    assert "skipped: 03-broken.png" in html
    assert html.count("data:image/png;base64,") == 2  # the good plots stay, named by file
    assert 'class="pareto-plot"' in html and "<script" not in html.lower()


def test_missing_numbers_and_odd_summary_sections_do_not_break_the_page(tmp_path):
    summary = hostile_summary()
    summary.candidates.append(candidate("nan-run", "int8", 0.0, 1.0))
    summary.candidates[-1].throughput_per_s = None
    summary.candidates[-1].metric_value = None
    summary.candidates[-1].metric_ci95 = [None, None]
    summary.candidates[-1].latency_ms = {}
    summary.decision = {"warnings": "not a list", "recommendation": None}
    summary.search = {"steps": "oops", "status": "time_limit"}
    summary.scenario = {}
    html = render_report(summary)
    assert "Not plotted (no finite drop or throughput): nan-run." in html
    assert "time_limit" in html and "The search verified no plan." in html
    assert 'id="scenario"' not in html
    summary.decision, summary.search = {}, {}
    html = render_report(summary)
    assert 'id="search"' not in html and 'class="reason"' in html


def test_a_skipped_search_says_why():
    summary = hostile_summary()
    summary.search = {"status": "skipped", "start": "int8-mse", "why": f"{HOSTILE} meets the budget"}
    search = _section(render_report(summary), "search")
    assert "skipped" in search and f"{ESCAPED} meets the budget" in search
    assert "<table" not in search and "verified no plan" not in search


def test_search_steps_show_the_verdict_under_either_spelling():
    rows = re.findall(r"<tr.*?</tr>", _section(render_report(hostile_summary()), "search"), re.S)
    assert ">no<" in rows[1] and ">0.8<" in rows[1]  # "passes": False, est_cost_ms
    assert ">yes<" in rows[2] and 'class="chosen"' in rows[2]  # "within_budget": True, the best plan


def test_odd_values_in_search_steps_show_as_dashes():
    summary = hostile_summary()
    summary.search = {"steps": [{"plan": "x", "fallback_nodes": 5, "ci95": "bad", "drop": "?"}], "best": []}
    search = _section(render_report(summary), "search")
    assert "<td>x</td>" in search and search.count("\u2013") >= 4


def test_a_section_that_fails_to_render_becomes_a_note():
    summary = hostile_summary()
    summary.candidates[0].latency_ms = [1.0, 2.0]  # not a dict: the candidates table cannot be drawn
    html = render_report(summary)
    assert "the candidates table could not be read or shown (AttributeError" in _section(html, "candidates")
    assert 'class="pareto-plot"' in html and 'id="reproduce"' in html


def test_write_report_reads_the_folder_that_holds_the_page(run_folder):
    path = write_report(Summary.load(run_folder / "summary.json"), run_folder / "report.html")
    html = path.read_text(encoding="utf-8")
    assert 'class="sensitivity-chart"' in html and "outlier-range" in html
    assert write_report_for_run(run_folder).read_text(encoding="utf-8") == html


def test_run_folder_without_a_readable_summary_is_a_trimtab_error(tmp_path):
    with pytest.raises(TrimtabError, match="does not exist") as error:
        render_run_folder(tmp_path / "nowhere")
    assert error.value.hint
    (tmp_path / "run").mkdir()
    with pytest.raises(TrimtabError, match="no summary.json"):
        render_run_folder(tmp_path / "run")
    (tmp_path / "run" / "summary.json").write_text("{truncated", encoding="utf-8")
    with pytest.raises(TrimtabError, match="not valid JSON"):
        render_run_folder(tmp_path / "run")
    (tmp_path / "run" / "summary.json").write_text('{"chosen": "x"}', encoding="utf-8")
    with pytest.raises(TrimtabError, match="not a trimtab summary"):
        render_run_folder(tmp_path / "run")


def test_the_demo_like_folder_renders_without_warnings(tmp_path, caplog):
    run = make_run_folder(tmp_path / "run")
    with caplog.at_level("WARNING", logger="trimtab.report"):
        render_run_folder(run)
    assert not caplog.records


def test_layer_precisions_show_counts_and_the_layers_that_ran_in_float():
    summary = _summary()
    assert 'id="layer-precisions"' not in render_report(summary)  # nothing chosen per layer: no section
    summary.candidates[0].layer_precisions = {"qkv": "int8", HOSTILE: "float16", "ffn": "int8"}
    section = _section(render_report(summary), "layer-precisions")
    assert "float16: 1, int8: 2" in section
    assert ESCAPED in section and HOSTILE not in section and "qkv" not in section
