"""Writing the evaluation report: ``results.json``, ``results.md``, ``report.html`` and the plot.

``report.html`` is a single self-contained page (inline CSS, the plot embedded as base64 PNG);
every piece of text in it is HTML-escaped, passages and queries included. Every file is written
atomically.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from factrace.data.atomic import atomic_write
from factrace.evaluate.kinds import KINDS
from factrace.evaluate.ladder import SIGNIFICANT_SE, Finding
from factrace.extras import require
from factrace.report.examples import ReportExample
from factrace.report.kinds import KINDS_PLOT, kind_rows, kinds_markdown, kinds_png
from factrace.report.plot import scatter_png
from factrace.report.scaling import HEADER as SCALING_HEADER
from factrace.report.scaling import SCALING_PLOT, scaling_markdown, scaling_png, scaling_rows
from factrace.report.table import columns, format_value, markdown_report, verdict
from factrace.report.template import REPORT_TEMPLATE

PLOT_NAME = "mrr_vs_tail_patch.png"
_CSS = {"held": "held", "did not hold": "failed", "not significant": "unsure",
        "not measured": "unmeasured"}


def as_finding(item: Finding | Sequence | Mapping) -> Finding:
    """A :class:`Finding` from itself, a ``(claim, held, evidence[, z])`` tuple or a dict."""
    if isinstance(item, Finding):
        return item
    if isinstance(item, Mapping):
        return Finding(item["claim"], item["held"], item["evidence"], item.get("z"))
    return Finding(*item)


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (JSON has no NaN) and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _shown(value: Any) -> str:
    """A metadata value for people: numbers to 4 significant digits, mappings as ``key value``
    pairs, not raw JSON (``lr 0.0003``, not ``{"lr": 0.00030000000000000003}``)."""
    if isinstance(value, str):
        return value
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_shown(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list | tuple):
        return ", ".join(_shown(v) for v in value) or "–"
    return str(value)


def render_html(
    rows: Sequence[dict],
    findings: Sequence[Finding],
    examples: Sequence[ReportExample] = (),
    metadata: Mapping[str, Any] | None = None,
    plot_png: bytes | None = None,
    title: str = "factrace: fact tracing report",
    kinds_plot: bytes | None = None,
    scaling: Mapping | None = None,
    scaling_plot: bytes | None = None,
) -> str:
    """The report page as a string (jinja2, autoescaped)."""
    from jinja2 import Environment

    env = Environment(autoescape=True, keep_trailing_newline=True)
    template = env.from_string(REPORT_TEMPLATE)
    shown = columns(rows)
    table = [{"method": r["method"], "cells": [format_value(r, key) for key, _ in shown],
              "n_queries": r.get("n_queries", ""), "n_tail_patch": r.get("n_tail_patch", "")}
             for r in rows]
    shown_findings = [{"claim": f.claim, "evidence": f.evidence, "verdict": verdict(f),
                       "css": _CSS[verdict(f)]} for f in findings]
    return template.render(
        title=title,
        metadata=[(str(k), _shown(v)) for k, v in (metadata or {}).items()],
        columns=[t for _, t in shown],
        rows=table,
        plot=base64.b64encode(plot_png).decode("ascii") if plot_png else None,
        findings=shown_findings,
        significant=f"{SIGNIFICANT_SE:g}",
        examples=examples,
        kind_rows=kind_rows(rows), kind_names=KINDS,
        scaling_header=SCALING_HEADER, scaling_rows=scaling_rows(scaling) if scaling else [],
        scaling_same=scaling["same"] if scaling else "",
        scaling_plot=base64.b64encode(scaling_plot).decode("ascii") if scaling_plot else None,
        kinds_plot=base64.b64encode(kinds_plot).decode("ascii") if kinds_plot else None,
    )


def write_report(
    out_dir: str | os.PathLike,
    rows: Sequence[dict],
    findings: Sequence[Finding | Sequence | Mapping] = (),
    examples: Sequence[ReportExample] = (),
    metadata: Mapping[str, Any] | None = None,
    scaling: Mapping | None = None,
) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (created if needed); return them by kind.

    Args:
        out_dir: the report directory.
        rows: the results table, as :func:`factrace.evaluate.ladder.results_rows` makes it.
        findings: :class:`Finding` objects (or ``(claim, held, evidence)`` tuples) from
            :func:`factrace.evaluate.ladder.findings`.
        examples: queries to show with their rankings side by side (see
            :func:`factrace.report.examples.build_examples`).
        metadata: what produced the results (model, corpus, configuration, ...), shown at the
            top of the page and saved in ``results.json``.
        scaling: the scaling study (:func:`factrace.evaluate.scaling.run_scaling`): its
            checkpoints are ``results.json``'s ``scaling`` list, its table and plot in the page.

    Returns:
        ``{"json": ..., "markdown": ..., "html": ...}`` plus ``"plot"`` when a plot was drawn.
    """
    require("the report", "report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = [as_finding(f) for f in findings]
    png = scatter_png(rows)
    kinds = kinds_png(rows)
    scaled = scaling_png(scaling)
    paths = {"json": out / "results.json", "markdown": out / "results.md",
             "html": out / "report.html"}
    record = {
        "metadata": dict(metadata or {}),
        "rows": list(rows),
        "findings": [f.to_dict() for f in found],
        "examples": [e.to_dict() for e in examples],
    }
    if scaling:
        record["scaling"] = list(scaling["checkpoints"])
        record["scaling_axes"] = {**scaling["axes"], "same": scaling["same"]}
    with atomic_write(paths["json"]) as handle:
        json.dump(_json_safe(record), handle, indent=2, ensure_ascii=False, allow_nan=False)
        handle.write("\n")
    with atomic_write(paths["markdown"]) as handle:
        handle.write(markdown_report(rows, found))
        if kind_rows(rows):
            handle.write("\n## Proponent kinds\n\n" + kinds_markdown(rows))
        if scaling:
            handle.write("\n## Scaling study\n\n" + scaling_markdown(scaling))
    if png is not None:
        paths["plot"] = out / PLOT_NAME
        with atomic_write(paths["plot"], "wb") as handle:
            handle.write(png)
    if scaled is not None:
        paths["scaling_plot"] = out / SCALING_PLOT
        with atomic_write(paths["scaling_plot"], "wb") as handle:
            handle.write(scaled)
    if kinds is not None:
        paths["kinds_plot"] = out / KINDS_PLOT
        with atomic_write(paths["kinds_plot"], "wb") as handle:
            handle.write(kinds)
    with atomic_write(paths["html"]) as handle:
        handle.write(render_html(rows, found, examples, metadata, png, kinds_plot=kinds,
                                 scaling=scaling, scaling_plot=scaled))
    return paths
