"""Per-subject report: ROI tables, terminal summaries and one self-contained HTML page."""

from alignment.report.html import render_subject_report, write_subject_report
from alignment.report.tables import load_scores, roi_table, summary_lines

__all__ = [
    "load_scores",
    "render_subject_report",
    "roi_table",
    "summary_lines",
    "write_subject_report",
]
