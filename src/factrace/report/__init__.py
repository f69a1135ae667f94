"""The evaluation report: results table, findings, the attribution-vs-influence plot and worked
examples, written as ``results.json``, ``results.md`` and a self-contained ``report.html``."""

from factrace.lazy import lazy_exports

# each imported when first used (see factrace.lazy)
__getattr__, __dir__ = lazy_exports(globals(), {
    "ReportExample": "factrace.report.examples", "ShownPassage": "factrace.report.examples",
    "build_examples": "factrace.report.examples", "scatter_png": "factrace.report.plot",
    "markdown_table": "factrace.report.table", "print_table": "factrace.report.table",
    "render_html": "factrace.report.write", "write_report": "factrace.report.write",
})

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
