"""The scaling study in the report: one table (Markdown, terminal, HTML rows) and one plot per
axis (x: training tokens or parameters; y: the metrics, each mean ± se).

``scaling`` is what :func:`factrace.evaluate.scaling.run_scaling` returns.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

SCALING_PLOT = "scaling.png"
HEADER = ("Checkpoint", "Parameters", "Tokens", "Step", "TrackStar MRR", "TrackStar R@10",
          "Tail-patch TrackStar", "Tail-patch BM25", "Overlap@10", "Entails@10 TrackStar")


def _pm(value, se, digits: str = ".3f") -> str:
    if value is None:
        return "–"
    return f"{value:{digits}} ± {(se or 0.0):{digits}}"


def _entails(method: dict) -> tuple[float | None, float | None]:
    share = ((method.get("kinds") or {}).get("top10") or {}).get("entails")
    return (share["mean"], share["se"]) if share else (None, None)


def label(model: str) -> str:
    """A checkpoint's name in the table: its directory's name, a long one (a hash) cut."""
    name = Path(model).name or model
    return name if len(name) <= 24 else name[:12] + "…"


def scaling_rows(scaling: Mapping) -> list[list[str]]:
    """One row of cells per checkpoint, in the order given (:data:`HEADER`)."""
    out = []
    for e in scaling["checkpoints"]:
        ts, bm = e["trackstar"], e["bm25"]
        out.append([label(e["model"]), f"{e['parameters']:,}",
                    f"{e['tokens']:,}" if e["tokens"] else "–",
                    f"{e['step']:,}" if e["step"] else "–",
                    _pm(ts["mrr"], ts["mrr_se"]), _pm(ts["recall10"], ts["recall10_se"]),
                    _pm(ts["tail_patch"], ts["tail_patch_se"], "#.3g"),
                    _pm(bm["tail_patch"], bm["tail_patch_se"], "#.3g"),
                    _pm(e["overlap10"], e["overlap10_se"]), _pm(*_entails(ts))])
    return out


def scaling_markdown(scaling: Mapping) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in scaling_rows(scaling)]
    return "\n".join(lines) + "\n\n" + scaling["same"] + ".\n"


def print_scaling(scaling: Mapping | None, console=None) -> None:
    """The scaling table in the terminal (nothing without a study)."""
    if not scaling:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Scaling study (mean ± se over queries)")
    for title in HEADER:
        table.add_column(title, justify="left" if title == "Checkpoint" else "right")
    for row in scaling_rows(scaling):
        table.add_row(*row)
    (console or Console()).print(table)


_SERIES = (("TrackStar MRR", lambda e: (e["trackstar"]["mrr"], e["trackstar"]["mrr_se"])),
           ("TrackStar recall@10", lambda e: (e["trackstar"]["recall10"],
                                              e["trackstar"]["recall10_se"])),
           ("overlap@10 with BM25", lambda e: (e["overlap10"], e["overlap10_se"])),
           ("entails@10 TrackStar", lambda e: _entails(e["trackstar"])))
_INFLUENCE = (("tail-patch TrackStar", "trackstar"), ("tail-patch BM25", "bm25"))


def scaling_png(scaling: Mapping | None, dpi: int = 110) -> bytes | None:
    """Per axis with two or more checkpoints, two panels: attribution and alignment (MRR,
    recall@10, overlap@10, entails@10) and influence (tail-patch of TrackStar and BM25),
    against training tokens (or steps, or order) and parameters; ``None`` without an axis."""
    if not scaling:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entries, order = scaling["checkpoints"], scaling["axes"]
    shown = [(a, order[a]) for a in ("tokens", "size") if order[a]]
    if not shown:
        return None
    fig = Figure(figsize=(10, 3.8 * len(shown)), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(len(shown), 2, squeeze=False)
    for (axis, chosen), (left, right) in zip(shown, panels, strict=True):
        points = [entries[i] for i in chosen]
        if axis == "size":
            xs, label = [e["parameters"] for e in points], "parameters"
        elif order["tokens_by"] == "training tokens":
            xs, label = [e["tokens"] for e in points], "training tokens"
        elif all(e["step"] for e in points):
            xs, label = [e["step"] for e in points], "optimizer steps"
        else:
            xs, label = list(range(1, len(points) + 1)), "checkpoint (order given)"
        for name, get in _SERIES:
            values = [get(e) for e in points]
            if any(v[0] is None for v in values):
                continue
            left.errorbar(xs, [v[0] for v in values], yerr=[v[1] or 0 for v in values],
                          marker="o", capsize=3, label=name)
        for name, method in _INFLUENCE:
            values = [(e[method]["tail_patch"], e[method]["tail_patch_se"]) for e in points]
            if any(v[0] is None for v in values):
                continue
            right.errorbar(xs, [v[0] for v in values], yerr=[v[1] or 0 for v in values],
                           marker="s", capsize=3, label=name)
        right.axhline(0.0, color="grey", linewidth=0.6)
        for ax, title in ((left, "attribution and alignment"), (right, "influence (Δp)")):
            ax.set_xlabel(label)
            ax.set_title(f"{title} against {label}")
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=8)
        left.set_ylim(0, 1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()
