"""report: summary.json (the contract) and report.html, rendered from saved results only."""

from trimtab.report.html import render_report, render_run_folder, write_report, write_report_for_run
from trimtab.report.summary import CandidateSummary, Summary

__all__ = ["CandidateSummary", "Summary", "render_report", "render_run_folder", "write_report", "write_report_for_run"]
