"""Proponent kinds in the report: a table (Markdown, terminal, HTML rows) and one stacked bar
per method.

Rows are those of :func:`factrace.evaluate.ladder.results_rows` with ``kinds`` added by
:func:`factrace.evaluate.kinds.add_kinds`; a row without ``kinds`` (or with ``n_queries`` 0)
is left out.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from factrace.evaluate.kinds import KIND_CUTOFFS, KINDS

KINDS_PLOT = "kinds.png"
_COLOURS = {"entails": "#1a7f37", "object": "#4292c6", "subject": "#fdae6b",
            "relation": "#9e9ac8", "other": "#bdbdbd"}


def kind_rows(rows: Sequence[dict]) -> list[dict]:
    """One table row per (method, cut-off): ``{"method", "k", "cells": [share ± se per kind],
    "n_queries"}``."""
    out = []
    for row in rows:
        summary = row.get("kinds") or {}
        for k in KIND_CUTOFFS:
            shares = summary.get(f"top{k}")
            if not shares:
                continue
            out.append({"method": row["method"], "k": k, "n_queries": summary["n_queries"],
                        "cells": [f"{shares[kind]['mean']:.2f} ± {shares[kind]['se']:.2f}"
                                  for kind in KINDS]})
    return out


def kinds_markdown(rows: Sequence[dict]) -> str:
    """The kinds table as Markdown ('' when no row has kinds)."""
    table = kind_rows(rows)
    if not table:
        return ""
    lines = ["| Method | top-k | " + " | ".join(KINDS) + " | Queries |",
             "|" + "---|" * (len(KINDS) + 3)]
    for r in table:
        lines.append(f"| {r['method']} | {r['k']} | " + " | ".join(r["cells"])
                     + f" | {r['n_queries']} |")
    return "\n".join(lines) + "\n"


def print_kinds(rows: Sequence[dict], console=None) -> None:
    """The kinds table in the terminal (nothing when no row has kinds)."""
    from rich.console import Console
    from rich.table import Table

    table_rows = kind_rows(rows)
    if not table_rows:
        return
    table = Table(title="Proponent kinds (share of the top-k, mean ± se over queries)")
    for title in ("Method", "top-k", *KINDS):
        table.add_column(title, justify="left" if title == "Method" else "right")
    for r in table_rows:
        table.add_row(str(r["method"]), str(r["k"]), *r["cells"])
    (console or Console()).print(table)


def kinds_png(rows: Sequence[dict], k: int = max(KIND_CUTOFFS), dpi: int = 110) -> bytes | None:
    """One horizontal stacked bar per method: the share of each kind among its top-``k``
    proponents (mean over queries); ``None`` when no row has kinds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [r for r in rows if (r.get("kinds") or {}).get(f"top{k}")]
    if not shown:
        return None
    fig = Figure(figsize=(7.2, 0.45 * len(shown) + 1.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = [str(r["method"]) for r in shown][::-1]
    left = [0.0] * len(shown)
    for kind in KINDS:
        widths = [r["kinds"][f"top{k}"][kind]["mean"] for r in shown][::-1]
        ax.barh(names, widths, left=left, color=_COLOURS[kind], label=kind,
                edgecolor="white", linewidth=0.5)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of the top-{k} proponents (mean over queries)")
    ax.set_title("What kind of passage each method finds")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="kind",
              title_fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()
