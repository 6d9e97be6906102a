"""`trimtab report RUN_DIR` re-renders report.html from the saved files alone."""

import subprocess
import sys

from tests.report.conftest import ESCAPED, make_run_folder


def _trimtab(*args):
    return subprocess.run([sys.executable, "-m", "trimtab.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_report_rerenders_the_page_from_the_run_folder(tmp_path):
    run = make_run_folder(tmp_path / "run")
    result = _trimtab("report", run)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(run / "report.html")
    html = (run / "report.html").read_text(encoding="utf-8")
    assert 'class="pareto-plot"' in html and 'class="sensitivity-chart"' in html and ESCAPED in html
    assert not list(run.glob(".report.html.*"))  # the atomic write left no temporary file


def _assert_clean_error(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "\nhint: " in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_report_on_a_missing_folder(tmp_path):
    _assert_clean_error(_trimtab("report", tmp_path / "nowhere"), "nowhere", "does not exist")


def test_report_on_a_folder_without_summary(tmp_path):
    _assert_clean_error(_trimtab("report", tmp_path), "no summary.json")


def test_report_on_a_corrupt_summary(tmp_path):
    (tmp_path / "summary.json").write_text('{"trimtab_version": "0.1', encoding="utf-8")
    _assert_clean_error(_trimtab("report", tmp_path), "summary.json", "not valid JSON")
    (tmp_path / "summary.json").write_text('{"chosen": "fp32"}', encoding="utf-8")
    _assert_clean_error(_trimtab("report", tmp_path), "not a trimtab summary")
    assert not (tmp_path / "report.html").exists()
