"""Figures from the roll-up table (matplotlib; PNG and PDF side by side)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def attention_label(row: pd.Series) -> str:
    """``softmax``, ``relu/L`` (alpha 1), ``relu`` (alpha 0) or ``relu L^-0.5``."""
    if row["activation"] == "softmax":
        return "softmax"
    alpha = float(row["alpha"])
    if alpha == 0:
        return row["activation"]
    return f"{row['activation']}/L" if alpha == 1 else f"{row['activation']} L^-{alpha:g}"


def save(fig: plt.Figure, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def accuracy_bars(df: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Validation accuracy per attention variant (mean over seeds, with the spread when there are several)."""
    df = df.assign(label=df.apply(attention_label, axis=1))
    stats = df.groupby("label", sort=False)["val_acc"].agg(["mean", "min", "max"])
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    spread = [stats["mean"] - stats["min"], stats["max"] - stats["mean"]] if len(df) > len(stats) else None
    ax.bar(stats.index, stats["mean"], color=[f"C{i}" for i in range(len(stats))], yerr=spread, capsize=4)
    for x, y in enumerate(stats["mean"]):
        ax.annotate(f"{y:.3f}", (x, y), ha="center", va="bottom", xytext=(0, 3), textcoords="offset points")
    low = max(0.0, stats["min"].min() - 0.1)
    ax.set_ylim(low, min(1.0, stats["max"].max() + 0.05))
    ax.set_ylabel("validation accuracy")
    ax.set_title(title, fontsize=9)
    return save(fig, stem)
