"""The demo report's figures: the learning curve (each method's metrics after each label) and the
contact sheet of the labelled medoids (PIL: matplotlib takes seconds for a grid of dozens)."""

from __future__ import annotations

import math
from pathlib import Path

METHOD_STYLE = {  # label, colour, line style
    "ssm-al": ("SSM-AL (k-medoid references)", "#d62728", "-"),
    "random": ("random references", "#1f77b4", "--"),
    "cca": ("CCA on the same pairs", "#2ca02c", ":"),
}
DIRECTIONS = {"i2t": "image→text", "t2i": "text→image"}

PREFERRED = ("recall@10", "map")  # what the figure and the table show when present


def shown_metrics(curve: list[dict]) -> list[str]:
    """Recall@10 and MAP when recorded, else every metric present."""
    names = metric_names(curve)
    preferred = [m for m in PREFERRED if m in names]
    return preferred or names


def metric_names(curve: list[dict]) -> list[str]:
    """Base metric names present in the curve (``recall@10``, ``map``...), recall first."""
    names = set()
    for point in curve:
        for values in (point.get("methods") or {}).values():
            for key in values or {}:
                base, _, direction = key.rpartition("_")
                if direction in DIRECTIONS and base:
                    names.add(base)
    return sorted(names, key=lambda n: (not n.startswith("recall"), _recall_k(n), n))


def _recall_k(name: str) -> int:
    try:
        return int(name.split("@", 1)[1])
    except (IndexError, ValueError):
        return 0


def curve_series(curve: list[dict], method: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for point in curve:
        value = ((point.get("methods") or {}).get(method) or {}).get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        xs.append(int(point["labels"]))
        ys.append(float(value))
    return xs, ys


def curve_methods(curve: list[dict]) -> list[str]:
    seen = []
    for point in curve:
        for m in point.get("methods") or {}:
            if m not in seen:
                seen.append(m)
    known = [m for m in METHOD_STYLE if m in seen]
    return known + [m for m in seen if m not in METHOD_STYLE]


# -- figures ----------------------------------------------------------------------------------

def plot_learning_curve(curve: list[dict], path: Path, chance: dict | None = None) -> list[str]:
    """One panel per metric (Recall@10, MAP...), both directions, every method; returns the
    metrics plotted."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = shown_metrics(curve)
    if not metrics:
        return []
    methods = curve_methods(curve)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for method in methods:
            label, colour, style = METHOD_STYLE.get(method, (method, None, "-."))
            for direction, marker in (("i2t", "o"), ("t2i", "s")):
                xs, ys = curve_series(curve, method, f"{metric}_{direction}")
                if xs:
                    ax.plot(xs, ys, linestyle=style, marker=marker, markersize=3.5, color=colour,
                            alpha=1.0 if direction == "i2t" else 0.6,
                            label=f"{label}, {DIRECTIONS[direction]}")
        if chance and chance.get(metric) is not None:
            ax.axhline(chance[metric], color="grey", linewidth=0.8, linestyle="-", label="chance")
        ax.set_title(metric.replace("recall@", "Recall@").replace("map", "MAP"))
        ax.set_xlabel("number of labels (reference pairs)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a count of labels: no 2.5, 7.5
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = min(len(handles), 2)  # the labels are long: three columns overflow a one-panel figure
    fig.tight_layout(rect=(0, 0.03 + 0.04 * math.ceil(len(handles) / ncol), 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # never crop the legend
    plt.close(fig)
    return metrics


def plot_medoids(medoids: list[dict], path: Path, columns: int = 6, limit: int = 60,
                 cell: int = 150) -> bool:
    """A contact sheet (PNG) of the medoids with the caption each one got. Drawn with PIL:
    matplotlib takes seconds for a grid of dozens of images."""
    from PIL import Image, ImageDraw, ImageFont

    medoids = [m for m in medoids if m.get("image_path")][:limit]
    if not medoids:
        return False
    font = _sheet_font(ImageFont, 11)
    text_h = 4 * 13 + 6
    rows = math.ceil(len(medoids) / columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, m in enumerate(medoids):
        x, y = (n % columns) * cell, (n // columns) * (cell + text_h)
        try:
            with Image.open(m["image_path"]) as img:
                img = img.convert("RGB")
                img.thumbnail((cell - 10, cell - 10))
                sheet.paste(img, (x + (cell - img.width) // 2, y + 5 + (cell - 10 - img.height) // 2))
        except (OSError, ValueError):
            draw.text((x + 10, y + cell // 2), "unreadable", fill="grey", font=font)
        caption = f"#{m.get('rank', '?')}: " + str(m.get("text") or "(no match)")
        fits = lambda line: draw.textlength(line, font=font) <= cell - 12  # noqa: E731
        draw.multiline_text((x + 6, y + cell), _wrap(caption, fits, 4), fill="black", font=font, spacing=2)
    sheet.save(path, format="PNG")
    return True


def _sheet_font(ImageFont, size: int):
    """DejaVu Sans from matplotlib's own data (always installed with it): Pillow's default font
    draws a space so narrow that "A grass" reads "Agrass"."""
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, fits, max_lines: int = 3) -> str:
    """Greedy word wrap; ``fits(line)`` says whether a line fits (a pixel width for the sheet), or
    ``fits`` is a number of characters. A word longer than a line is cut, never left to run into
    the neighbouring caption."""
    if isinstance(fits, int):
        width = fits
        fits = lambda line: len(line) <= width  # noqa: E731
    lines, line = [], ""
    for w in text.split():
        while not fits(w) and len(w) > 1:  # cut an over-long word
            cut = max(1, next((n for n in range(len(w) - 1, 0, -1) if fits(w[:n] + "-")), 1))
            if line:
                lines.append(line)
                line = ""
            lines.append(w[:cut] + "-")
            w = w[cut:]
        candidate = f"{line} {w}".strip()
        if line and not fits(candidate):
            lines.append(line)
            line = w
        else:
            line = candidate
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and not fits(last + "…"):
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + "…"]
    return "\n".join(lines)


