"""The rows of :func:`xmodal.evaluation.protocol.evaluate` as JSON, markdown tables and a plot."""

from __future__ import annotations

import json
from pathlib import Path

from xmodal.evaluation.protocol import DIRECTIONS, SELECTIONS, _metric_order

# -- reporting --------------------------------------------------------------------------------

def write_json(rows: list[dict], path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")


def _method_order(name: str) -> tuple:
    fixed = ["ssm-al", "ssm-al-i", "ssm-al-t", "random-refs", "cca", "all-pairs"]
    return (fixed.index(name), name) if name in fixed else (len(fixed), name)


def markdown_table(rows: list[dict], metrics=None) -> str:
    """One table per (dataset, metric): methods × (N, direction), ``mean ± std`` over seeds."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        drows = [r for r in rows if r["dataset"] == dataset]
        for metric in sorted({r["metric"] for r in drows}, key=_metric_order):
            if metrics and metric not in metrics:
                continue
            mrows = [r for r in drows if r["metric"] == metric]
            ns = sorted({r["n"] for r in mrows if r["method"] != "all-pairs"})
            seeds = max((len(r["seeds"]) for r in mrows), default=0)
            how = "R@1 + R@5 + R@10 of i2t and t2i" if metric == "rsum" else "i2t / t2i"
            captions = {r.get("eval_captions") for r in mrows} - {None, "first"}
            how += "; every caption of the evaluated images" if captions else ""
            out.append(f"**{dataset} — {metric}** (mean ± std over {seeds} seeds; {how})\n")
            out.append("| method | " + " | ".join(f"N={n}" for n in ns) + " |")
            out.append("|---|" + "---|" * len(ns))
            for method in sorted({r["method"] for r in mrows}, key=_method_order):
                cells = []
                for n in ns:
                    got = {r["direction"]: r for r in mrows if r["method"] == method
                           and (r["n"] == n or method == "all-pairs")}
                    if not got:
                        cells.append("—")
                        continue
                    parts = []
                    # rsum is one number over both directions (protocol.RSUM_KS)
                    for d in (("both",) if "both" in got else DIRECTIONS):
                        r = got.get(d)
                        parts.append("—" if r is None else
                                     (f"{r['value']:.4f}" + (f" ± {r['std']:.4f}" if r["seeds"] else "")))
                    sel = next((r.get("selection") for r in got.values() if r.get("selection")), None)
                    cells.append(" / ".join(parts) + (f" ({SELECTIONS[sel].upper()})" if sel else ""))
                label = method
                if method == "all-pairs":
                    label += f" (all {next(r['n'] for r in mrows if r['method'] == method)} pairs)"
                out.append(f"| {label} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def delta_table(rows: list[dict], base: str = "ssm-al", metrics=("map", "recall@10")) -> str:
    """Every other method against ``base`` at each N: ``value (±x.x %)`` of the mean over seeds,
    one line per (data set, metric, method); i2t / t2i in each cell."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        drows = [r for r in rows if r["dataset"] == dataset]
        for metric in [m for m in metrics if any(r["metric"] == m for r in drows)]:
            mrows = {(r["method"], r["n"], r["direction"]): r["value"] for r in drows if r["metric"] == metric}
            ns = sorted({n for (m, n, _) in mrows if m == base})
            if not ns:
                continue
            out.append(f"**{dataset} — {metric}: change against {base}** (i2t / t2i)\n")
            out.append("| method | " + " | ".join(f"N={n}" for n in ns) + " |")
            out.append("|---|" + "---|" * len(ns))
            for method in sorted({m for (m, _, _) in mrows if m not in (base, "all-pairs")}, key=_method_order):
                cells = []
                for n in ns:
                    parts = []
                    for d in DIRECTIONS:
                        b, v = mrows.get((base, n, d)), mrows.get((method, n, d))
                        parts.append("—" if b is None or v is None or b == 0 else f"{v:.3f} ({(v - b) / b:+.1%})")
                    cells.append(" / ".join(parts))
                out.append(f"| {method} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


PLOT_METHODS = ("ssm-al", "ssm-al-i", "ssm-al-t", "random-refs", "cca", "all-pairs", "ssm-al++",
                "ssm-al++center", "ssm-al+zscore")


def plot(rows: list[dict], path, methods=PLOT_METHODS) -> None:
    """MAP–N (or Recall@10–N) curves per method (default :data:`PLOT_METHODS`; None = all), one
    panel per data set and direction (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        drows = [r for r in rows if r["dataset"] == dataset]
        metric = "map" if any(r["metric"] == "map" for r in drows) else \
            ("recall@10" if any(r["metric"] == "recall@10" for r in drows) else drows[0]["metric"])
        for d in DIRECTIONS:
            panels.append((dataset, metric, d, [r for r in drows if r["metric"] == metric and r["direction"] == d]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (dataset, metric, d, prows) in zip(axes[0], panels):
        names = sorted({r["method"] for r in prows}, key=_method_order)
        if methods:
            names = [m for m in names if m in methods]
        for name in names:
            mr = sorted((r for r in prows if r["method"] == name), key=lambda r: r["n"])
            if name == "all-pairs":
                ax.axhline(mr[0]["value"], color="k", ls=":", lw=1, label=f"all-pairs (N={mr[0]['n']})")
                continue
            ax.errorbar([r["n"] for r in mr], [r["value"] for r in mr], yerr=[r["std"] for r in mr],
                        marker="o", ms=3, capsize=2, lw=1.8 if name == "ssm-al" else 1,
                        ls="-" if name.startswith("ssm-al") else "--", label=name)
        ax.set_title(f"{dataset} {d}")
        ax.set_xlabel("N (coupled pairs = references)")
        ax.set_ylabel(metric.upper() if metric == "map" else metric.capitalize())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
