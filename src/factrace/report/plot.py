"""The MRR (attribution) against tail-patch (influence) scatter plot, as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

from factrace.evaluate.ladder import LADDER

_LADDER_COLOURS = ("#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08306b")
_BASELINE_STYLES = (("tab:orange", "s"), ("tab:red", "D"), ("tab:green", "^"),
                    ("tab:grey", "v"), ("tab:purple", "P"), ("tab:brown", "X"))


def _style(method: str, n_baseline: int) -> tuple[str, str]:
    if method in LADDER:
        return _LADDER_COLOURS[LADDER.index(method)], "o"
    return _BASELINE_STYLES[n_baseline % len(_BASELINE_STYLES)]


def scatter_figure(rows: Sequence[dict]):
    """The plot as a :class:`~matplotlib.figure.Figure`, or ``None`` when no method has a
    tail-patch score.

    One point per method at (MRR, tail-patch) with standard-error bars. Methods are told apart
    by colour and marker and named in a legend beside the axes (labels next to points overlap
    when methods score alike, and get cut off at the edges): ladder methods are circles in
    darkening blues, baselines other colours and shapes. Drawn on a bare figure (no global
    pyplot state), so it is safe to call from any thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [r for r in rows if r.get("tail_patch") is not None and r.get("mrr") is not None]
    if not points:
        return None
    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n_baseline = 0
    for row in points:
        colour, marker = _style(row["method"], n_baseline)
        n_baseline += row["method"] not in LADDER
        ax.errorbar(row["mrr"], row["tail_patch"], xerr=row.get("mrr_se") or 0.0,
                    yerr=row.get("tail_patch_se") or 0.0, fmt=marker, color=colour, capsize=3,
                    markersize=7, markeredgecolor="black", markeredgewidth=0.5,
                    label=str(row["method"]))
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.margins(0.08)
    ax.set_xlabel("MRR (attribution)")
    ax.set_ylabel("tail-patch Δp (influence)")
    ax.set_title("Attribution vs influence (mean ± standard error)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
              title="method", title_fontsize=8)
    return fig


def scatter_png(rows: Sequence[dict], dpi: int = 110) -> bytes | None:
    """:func:`scatter_figure` as PNG bytes, or ``None`` when there is nothing to plot."""
    fig = scatter_figure(rows)
    if fig is None:
        return None
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()
