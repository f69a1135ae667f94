"""The results table as text: Markdown for ``results.md`` and a ``rich`` table for the terminal.

Rows are those of :func:`factrace.evaluate.ladder.results_rows`. MRR and Recall@10 are shown with
three decimals, tail-patch (a change in probability, often small) with three significant digits;
each as ``mean ± standard error``. A value that was not measured shows as ``–``.
"""

from __future__ import annotations

from collections.abc import Sequence

COLUMNS = (("mrr", "MRR"), ("recall10", "Recall@10"), ("tail_patch", "Tail-patch"))
LDS_COLUMN = ("lds", "LDS")
"""Shown after the others when some row has an LDS (:mod:`factrace.evaluate.lds`)."""


def columns(rows: Sequence[dict]) -> tuple[tuple[str, str], ...]:
    """The table's columns: :data:`COLUMNS`, and LDS when some row has one."""
    has_lds = any(row.get("lds") is not None for row in rows)
    return (*COLUMNS, LDS_COLUMN) if has_lds else COLUMNS
NOT_MEASURED = "–"


def format_value(row: dict, key: str) -> str:
    """``row[key] ± row[key_se]`` formatted for its metric, or ``–`` when not measured."""
    mean, se = row.get(key), row.get(f"{key}_se")
    if mean is None:
        return NOT_MEASURED
    se = se or 0.0
    if key == "tail_patch":
        return f"{mean:#.3g} ± {se:#.2g}"
    return f"{mean:.3f} ± {se:.3f}"


def verdict(finding) -> str:
    """A finding's verdict in words (see :attr:`factrace.evaluate.ladder.Finding.verdict`)."""
    return finding.verdict


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict]) -> str:
    """The paper-style table: method × MRR, Recall@10, tail-patch, as Markdown."""
    shown = columns(rows)
    header = ["Method"] + [title for _, title in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_md_cell(str(row["method"]))] + [format_value(row, key) for key, _ in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(rows: Sequence[dict], findings: Sequence) -> str:
    """``results.md``: the table, then each finding with its verdict and evidence."""
    parts = ["# Fact tracing results\n", markdown_table(rows)]
    if findings:
        parts.append("\n## Findings\n")
        for f in findings:
            parts.append(f"- **{verdict(f)}**: {_md_cell(f.claim)} — {_md_cell(f.evidence)}")
        parts.append("")
    return "\n".join(parts)


def print_table(rows: Sequence[dict], console=None) -> None:
    """Print the results table to the terminal with ``rich``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Fact tracing")
    table.add_column("Method")
    shown = columns(rows)
    for _, title in shown:
        table.add_column(title, justify="right")
    for row in rows:
        table.add_row(str(row["method"]), *(format_value(row, key) for key, _ in shown))
    (console or Console()).print(table)
