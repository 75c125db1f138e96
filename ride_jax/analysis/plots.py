"""Headless matplotlib plots of the analyses in :mod:`ride_jax.analysis.core`.

Each function builds a ``matplotlib.figure.Figure`` directly (no pyplot, no global
state, no display needed), writes a PNG of fixed size ``FIGSIZE`` at ``DPI``
(640 x 480 pixels), releases the figure and returns the path written.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ride_jax.analysis.core import GROUPS, SPLITS, _train_counts
from ride_jax.data.long_tail import shot_masks

FIGSIZE = (6.4, 4.8)
DPI = 100
GROUP_COLORS = {"all": "0.35", "many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}


def _new_figure() -> Figure:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Any) -> str:
    path = os.fspath(path)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()
    return path


def _array(x: Any, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be a numeric {ndim}-D array, got shape {a.shape} "
                         f"dtype {a.dtype}")
    return a.astype(np.float64)


def plot_accuracy_vs_count(per_class_acc: Any, train_counts: Any, path: Any,
                           title: str | None = None) -> str:
    """Per-class accuracy against training count (log x), coloured by shot group.

    Args:
      per_class_acc: ``[C]`` accuracies in [0, 1], NaN for classes without test
        examples (not drawn).
      train_counts: ``[C]`` TRAINING images per class (> 0 for the log axis).
      path: PNG to write.
      title: optional axes title.

    Returns:
      ``path`` as a string.
    """
    acc = _array(per_class_acc, "per_class_acc", 1)
    n = _train_counts(train_counts).astype(np.float64)
    if len(acc) != len(n):
        raise ValueError(f"per_class_acc has {len(acc)} classes but train_counts has {len(n)}")
    if np.any(n <= 0):
        raise ValueError("train_counts must be > 0 for the log-scaled count axis")
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, mask in shot_masks(n).items():
        keep = mask & ~np.isnan(acc)
        if mask.any():
            ax.scatter(n[keep], acc[keep], s=14, color=GROUP_COLORS[name],
                       label=f"{name} ({int(mask.sum())} classes)")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_hardest_negative_histograms(hist: Mapping[str, tuple[Any, Any]], path: Any) -> str:
    """Hardest-negative score histograms per group (RIDE Fig. 1b).

    Each group is drawn as the FRACTION of its examples per bin, so groups of different
    sizes compare; empty groups are skipped.

    Args:
      hist: ``{group: (counts [B], edges [B + 1])}`` from
        :func:`ride_jax.analysis.core.histograms_by_group`.
      path: PNG to write.

    Returns:
      ``path`` as a string.
    """
    if not isinstance(hist, Mapping) or not hist:
        raise ValueError("hist must be a non-empty dict {group: (counts, edges)}")
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, value in hist.items():
        try:
            counts, edges = value
        except (TypeError, ValueError):
            raise ValueError(f"hist[{name!r}] must be a pair (counts, edges)") from None
        counts = _array(counts, f"hist[{name!r}] counts", 1)
        edges = _array(edges, f"hist[{name!r}] edges", 1)
        if len(edges) != len(counts) + 1:
            raise ValueError(f"hist[{name!r}]: edges must have len(counts) + 1 = "
                             f"{len(counts) + 1} entries, got {len(edges)}")
        total = counts.sum()
        if total <= 0:
            continue
        ax.stairs(counts / total, edges, label=f"{name} (n={int(total)})",
                  color=GROUP_COLORS.get(name), linewidth=1.8,
                  fill=name != "all", alpha=0.35 if name != "all" else 1.0)
    ax.set_xlabel("hardest negative score (largest wrong-class probability)")
    ax.set_ylabel("fraction of examples")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def plot_bias_variance(tables: Mapping[str, Mapping[str, Mapping[str, Any]]],
                       path: Any) -> str:
    """Grouped bars of bias and variance per split, one colour per method (RIDE Fig. 1a).

    Args:
      tables: ``{method_name: table}``, each table from
        :func:`ride_jax.analysis.core.bias_variance_table`; a ``None`` entry (empty
        group) leaves its bar out.
      path: PNG to write.

    Returns:
      ``path`` as a string.
    """
    if not isinstance(tables, Mapping) or not tables:
        raise ValueError("tables must be a non-empty dict {method_name: bias_variance_table}")
    splits = [s for s in SPLITS if any(s in t for t in tables.values())]
    if not splits:
        raise ValueError(f"tables hold none of the splits {SPLITS}")
    fig = _new_figure()
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(splits))
    width = 0.8 / len(tables)
    for ax, key in zip(axes, ("bias", "variance")):
        for j, (method, table) in enumerate(tables.items()):
            heights = []
            for s in splits:
                v = table.get(s, {}).get(key) if isinstance(table.get(s), Mapping) else None
                heights.append(np.nan if v is None else float(v))
            ax.bar(x - 0.4 + (j + 0.5) * width, heights, width, label=str(method),
                   color=f"C{j}")
        ax.set_xticks(x, splits)
        ax.set_title(key)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("class-mean value")
    axes[0].legend(fontsize="small")
    return _save(fig, path)


def plot_confusion_matrix(cm: Any, path: Any, class_names: Any = None) -> str:
    """Row-normalised confusion matrix (rows = true class; empty rows stay 0).

    Args:
      cm: ``[C, C]`` counts from :func:`ride_jax.analysis.core.confusion_matrix`.
      path: PNG to write.
      class_names: optional ``[C]`` tick labels (drawn when C <= 30).

    Returns:
      ``path`` as a string.
    """
    m = _array(cm, "cm", 2)
    c = m.shape[0]
    if m.shape != (c, c) or c == 0:
        raise ValueError(f"cm must be a square [C, C] matrix, got shape {m.shape}")
    if np.any(m < 0) or not np.all(np.isfinite(m)):
        raise ValueError("cm must hold finite non-negative counts")
    if class_names is not None and len(class_names) != c:
        raise ValueError(f"class_names has {len(class_names)} names but cm has {c} classes")
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig = _new_figure()
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    if class_names is not None and c <= 30:
        ax.set_xticks(np.arange(c), [str(s) for s in class_names], rotation=90,
                      fontsize="x-small")
        ax.set_yticks(np.arange(c), [str(s) for s in class_names], fontsize="x-small")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return _save(fig, path)


def plot_expert_usage(usage: Any, train_counts: Any, path: Any) -> str:
    """Stacked fraction of each class's test examples that used 1..E experts.

    Classes are sorted by training count, largest first (stable on ties); a class
    without test examples gets an empty bar.

    Args:
      usage: ``[E, C]``; ``usage[k, c]`` = test examples of class c that used exactly
        k + 1 experts (``eval_counts(...)['usage']`` summed over batches).
      train_counts: ``[C]`` TRAINING images per class.
      path: PNG to write.

    Returns:
      ``path`` as a string.
    """
    u = _array(usage, "usage", 2)
    n = _train_counts(train_counts)
    e, c = u.shape
    if e == 0 or c != len(n):
        raise ValueError(f"usage must be [E, C] with E >= 1 and C = len(train_counts) = "
                         f"{len(n)}, got shape {u.shape}")
    if np.any(u < 0) or not np.all(np.isfinite(u)):
        raise ValueError("usage must hold finite non-negative counts")
    order = np.argsort(-n, kind="stable")
    u = u[:, order]
    tot = u.sum(0, keepdims=True)
    frac = np.divide(u, tot, out=np.zeros_like(u), where=tot > 0)
    fig = _new_figure()
    ax = fig.add_subplot()
    x = np.arange(c)
    bottom = np.zeros(c)
    for k in range(e):
        ax.bar(x, frac[k], 1.0, bottom=bottom, label=f"{k + 1} expert{'s' if k else ''}",
               color=f"C{k}", linewidth=0)
        bottom += frac[k]
    masks = shot_masks(n[order])
    for name in GROUPS[:-1]:                       # boundaries many|medium, medium|few
        idx = np.flatnonzero(masks[name])
        if idx.size and idx[-1] + 1 < c:
            ax.axvline(idx[-1] + 0.5, color="k", linewidth=0.8, linestyle="--")
    ax.set_xlim(-0.5, c - 0.5)
    ax.set_ylim(0, 1)
    ax.set_xlabel("class (sorted by training count, head first)")
    ax.set_ylabel("fraction of test examples")
    ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)


__all__ = ["plot_accuracy_vs_count", "plot_hardest_negative_histograms", "plot_bias_variance",
           "plot_confusion_matrix", "plot_expert_usage", "FIGSIZE", "DPI"]
