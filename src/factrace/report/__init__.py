"""The evaluation report: results table, findings, the attribution-vs-influence plot and worked
examples, written as ``results.json``, ``results.md`` and a self-contained ``report.html``."""

from factrace.report.examples import ReportExample, ShownPassage, build_examples
from factrace.report.plot import scatter_png
from factrace.report.table import markdown_table, print_table
from factrace.report.write import render_html, write_report

__all__ = [
    "ReportExample",
    "ShownPassage",
    "build_examples",
    "markdown_table",
    "print_table",
    "render_html",
    "scatter_png",
    "write_report",
]
