"""Pareto front (max accuracy, min cost) and its plot; shared by the search and the query layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_front(points: list[tuple[float, float | None, Any]]) -> list[tuple[float, float, Any]]:
    """Points (accuracy, cost, payload) not dominated by another (higher-or-equal accuracy at lower-or-equal
    cost, one strictly better). Returned sorted by cost. Points without a cost are ignored."""
    pts = [p for p in points if p[1] is not None]
    front = []
    for acc, cost, payload in sorted(pts, key=lambda p: (p[1], -p[0])):
        if not front or acc > front[-1][0]:
            front.append((acc, cost, payload))
    return front


def plot_pareto(points, front, path: Path, *, xlabel: str = "latency (ms)", ylabel: str = "accuracy",
                dense: tuple[float | None, float | None] | None = None, title: str = "Pareto front") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    pts = [p for p in points if p[1] is not None]
    ax.scatter([p[1] for p in pts], [p[0] for p in pts], s=14, c="#9aa5b1", label="candidates")
    ax.plot([p[1] for p in front], [p[0] for p in front], "-o", c="#d1495b", ms=5, label="Pareto front")
    if dense and dense[0] is not None and dense[1] is not None:
        ax.scatter([dense[1]], [dense[0]], marker="*", s=120, c="#00798c", label="dense")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
