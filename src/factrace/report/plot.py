"""The MRR (attribution) against tail-patch (influence) scatter plot, as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

from factrace.evaluate.ladder import LADDER


def scatter_png(rows: Sequence[dict], dpi: int = 110) -> bytes | None:
    """One labelled point per method at (MRR, tail-patch) with standard-error bars.

    Methods without a tail-patch score are left out; ``None`` when no method has one. Ladder
    methods and baselines get different colours. Drawn on a bare :class:`Figure` (no global
    pyplot state), so it is safe to call from any thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [r for r in rows if r.get("tail_patch") is not None and r.get("mrr") is not None]
    if not points:
        return None
    fig = Figure(figsize=(6.0, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for row in points:
        colour = "tab:blue" if row["method"] in LADDER else "tab:orange"
        ax.errorbar(row["mrr"], row["tail_patch"], xerr=row.get("mrr_se") or 0.0,
                    yerr=row.get("tail_patch_se") or 0.0, fmt="o", color=colour, capsize=3)
        ax.annotate(str(row["method"]), (row["mrr"], row["tail_patch"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_xlabel("MRR (attribution)")
    ax.set_ylabel("tail-patch Δp (influence)")
    ax.set_title("Attribution vs influence")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()
