"""The one writer of evaluation reports: rows as JSON, a Markdown table, and (optionally) a
PNG of accuracy against shots, all under one file stem."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Row = dict[str, Any]


def mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The mean over episodes and its 95% confidence interval's half-width (normal
    approximation; 0 for a single episode)."""
    a = np.asarray(values, np.float64)
    ci = 1.96 * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0.0
    return float(a.mean()), float(ci)


def pct(row: Row, key: str) -> str:
    """A fraction as a percentage with one decimal."""
    return f"{100 * float(row[key]):.1f}"


def acc_ci(row: Row) -> str:
    """`accuracy ± ci95`, in percent."""
    return f"{pct(row, 'accuracy')} ± {pct(row, 'ci95')}"


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def by_shots(rows: list[Row], panel: str, line: str) -> tuple[list[int], list[tuple[str, str]]]:
    """The shot counts, and the (panel, line) pairs in first-seen order."""
    shots = sorted({int(r["shots"]) for r in rows})
    pairs = list(dict.fromkeys((str(r[panel]), str(r[line])) for r in rows))
    return shots, pairs


def accuracy_table(rows: list[Row], panel: str, line: str,
                   extra: tuple[str, str] | None = None) -> str:
    """One row per (panel, line): accuracy ± CI per shot count; `extra` = (column title,
    row key) adds a column of that key's values joined by '/'."""
    shots, pairs = by_shots(rows, panel, line)
    header = [panel, line, *(f"{k}-shot" for k in shots)] + ([extra[0]] if extra else [])
    body = []
    for p, ln in pairs:
        rs = sorted((r for r in rows if str(r[panel]) == p and str(r[line]) == ln),
                    key=lambda r: int(r["shots"]))
        body.append([p, ln, *(acc_ci(r) for r in rs)]
                    + (["/".join(str(r[extra[1]]) for r in rs)] if extra else []))
    return markdown(header, body)


def accuracy_plot(rows: list[Row], panel: str, line: str, path: Path,
                  axes: tuple[str, str, str] = ("shots", "accuracy", "ci95")) -> None:
    """One panel per `panel` value, `axes` = (x, y, error) keys: by default accuracy (with
    its CI) against shots, one line per `line` value."""
    xk, yk, ek = axes
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(str(r[panel]) for r in rows))
    fig, grid = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, p in zip(grid[0], panels, strict=True):
        for ln in dict.fromkeys(str(r[line]) for r in rows if str(r[panel]) == p):
            pts = sorted((int(r[xk]), float(r[yk]), float(r[ek]))
                         for r in rows if str(r[panel]) == p and str(r[line]) == ln)
            ax.errorbar([x[0] for x in pts], [x[1] for x in pts], yerr=[x[2] for x in pts],
                        marker="o", capsize=3, label=ln)
        ax.set_title(p)
        ax.set_xlabel(xk)
        ax.set_ylabel(yk)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(stem: Path, rows: list[Row], table: str, plot: tuple[str, str] | None = None,
          axes: tuple[str, str, str] = ("shots", "accuracy", "ci95")) -> str:
    """`stem`.json (the rows), `stem`.md (the table) and, with `plot` = (panel key, line
    key), `stem`.png. Returns the table."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    stem.with_suffix(".md").write_text(table)
    if plot is not None:
        accuracy_plot(rows, *plot, stem.with_suffix(".png"), axes)
    return table


def reliability_plot(curves: dict[tuple[str, str], list[tuple[float, float, int]]],
                     path: Path, title: str) -> None:
    """Accuracy against mean score per confidence bin (models.calibration.reliability),
    one panel per set (first key), one line per scoring (second key); the diagonal is a
    perfectly calibrated score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(p for p, _ in curves))
    fig, grid = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, p in zip(grid[0], panels, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
        for (panel, line), pts in curves.items():
            if panel == p:
                ax.plot([x for x, _, _ in pts], [a for _, a, _ in pts], marker="o", label=line)
        ax.set_title(f"{p}, {title}", fontsize=9)
        ax.set_xlabel("mean score in bin")
        ax.set_ylabel("accuracy in bin")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
