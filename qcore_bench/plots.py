"""Plots from stored runs (PNG and PDF), as in the ACS paper's Figure 1.

- accuracy vs kept fraction, a line per method with a ±std band, full data dashed;
- accuracy vs label-noise rate, per kept fraction;
- accuracy vs training cost (compute units), so methods compare at equal budget;
- share of label-noisy samples in the selected subset over the epochs.

Every figure lists the methods in one order (that of the tables) with one colour each, and
its legend says what the dashed line, the star and the shaded band are.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .files import atomic_write
from .report import DETECTION_METRIC, GROUP, METRICS, method_order, title

BAND = "shaded: ±1 std over seeds"


MAX_PART = 48  # each part of a group's file name (data set, model, ...): a longer one is cut and hashed


def _short(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")
    if len(slug) <= MAX_PART:
        return slug
    return f"{slug[:MAX_PART - 11].rstrip('-')}-{hashlib.sha256(slug.encode()).hexdigest()[:10]}"


def _slug(parts: tuple[Any, ...]) -> str:
    """The group as a file-name part, each of its parts at most MAX_PART characters: a data set with
    many params must not push a name past the 255 bytes a file system allows."""
    return "-".join(part for part in (_short(str(p)) for p in parts) if part)


def _save(fig: Any, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        # no creation date in a PDF: the same results give the same bytes, so a regenerated plot is no diff
        meta = {"CreationDate": None} if ext == "pdf" else None
        atomic_write(path, lambda f, e=ext, m=meta: fig.savefig(f, format=e, dpi=150, bbox_inches="tight", metadata=m),
                     mode="wb")
        paths.append(path)
    return paths


def _line(ax: Any, x: pd.Series, mean: pd.Series, std: pd.Series, label: str, color: Any) -> None:
    ax.plot(x, mean, marker="o", label=label, color=color)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)


def _legend(axes: list[Any], order: list[str], notes: list[tuple[Any, str]]) -> None:
    """One legend right of the last axes: methods in table order, then what the marks mean."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    rank = {m: i for i, m in enumerate(order)}
    labels = sorted(seen, key=lambda m: (rank.get(m, len(rank)), m))
    handles = [seen[m] for m in labels] + [h for h, _ in notes]
    axes[-1].legend(handles, labels + [t for _, t in notes], loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)


def _log_cost_axis(ax: Any, costs: pd.Series) -> None:
    """Log scale with few, short labels (10k, 20k, 50k): the default minor labels overlap."""
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    span = costs.max() / max(costs.min(), 1)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 100 else (1.0,)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_all(df: pd.DataFrame, histories: dict[str, list[dict[str, Any]]], out: Path,
             metric: str = "final", vs: str = "random") -> list[Path]:
    """Write every plot the data supports; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if df.empty:
        return []
    col, paths = METRICS[metric], []
    full = set(df.loc[df.full, "method"])
    order = method_order(df, vs)
    palette = plt.get_cmap("tab10")
    colors = {m: "k" if m in full else palette(i % 10) for i, m in enumerate(order)}  # the same in every figure
    band = (Patch(color="grey", alpha=0.2), BAND)
    when = 'final-epoch' if metric == 'final' else 'best-over-epochs'
    labels = {"top-1": f"{when} test top-1 (%)", "mAP": f"{when} {DETECTION_METRIC}"}
    stats = (df.groupby([*GROUP, "dataset_display", "metric", "noise_rate", "method", "fraction", "full"], sort=False)
             .agg(mean=(col, "mean"), std=(col, "std"), cost=("cost_units", "mean")).fillna({"std": 0.0})
             .reset_index())

    for key, g in stats.groupby(GROUP, sort=False):
        label = labels[g["metric"].iloc[0]]
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
        for method, m in g[~g.full].groupby("method", sort=False):
            m = m.sort_values("fraction")
            _line(ax, m.fraction * 100, m["mean"], m["std"], method, colors[method])
            bx.plot(m.cost, m["mean"], marker="o", label=method, color=colors[method])
        notes = [band]
        for method, m in g[g.full].groupby("method", sort=False):
            ax.axhline(m["mean"].iloc[0], ls="--", color="k")
            bx.scatter(m.cost, m["mean"], marker="*", s=120, color="k")
            notes = [(Line2D([], [], ls="--", color="k"), f"{method}: all samples every epoch"),
                     (Line2D([], [], ls="", marker="*", markersize=10, color="k"), f"{method}, at its cost"), band]
        what = "mAP" if g["metric"].iloc[0] == "mAP" else "accuracy"
        ax.set(xlabel="kept fraction per epoch (%)", ylabel=label, title=f"{what} vs fraction")
        bx.set(xlabel="total cost (sample forward passes, README cost model)", ylabel=label, title=f"{what} vs cost")
        _log_cost_axis(bx, g.cost)
        _legend([ax, bx], order, notes)
        fig.suptitle(title(GROUP, g), fontsize=9)
        paths += _save(fig, out, f"fraction_{_slug(key)}")
        plt.close(fig)

    by_noise = [k for k in GROUP if k != "noise"]
    for key, g in stats.groupby(by_noise, sort=False):
        if g["noise_rate"].nunique() < 2:
            continue
        fractions = sorted(g.loc[~g.full, "fraction"].unique())
        label = labels[g["metric"].iloc[0]]
        fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 4), squeeze=False)
        for ax, f in zip(axes[0], fractions):
            for method, m in pd.concat([g[g.full], g[(~g.full) & (g.fraction == f)]]).groupby("method", sort=False):
                m = m.sort_values("noise_rate")
                _line(ax, m.noise_rate * 100, m["mean"], m["std"], method, colors[method])
            ax.set(xlabel="label noise (%)", ylabel=label, title=f"kept {f:.0%}")
        _legend(list(axes[0]), order, [band])
        fig.suptitle(title(by_noise, g), fontsize=9)
        paths += _save(fig, out, f"noise_{_slug(key)}")
        plt.close(fig)

    noisy = df[(df.noise_rate > 0) & ~df.full]
    for key, g in noisy.groupby(GROUP, sort=False):
        fractions = sorted(g["fraction"].unique())
        fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 4), squeeze=False)
        for ax, f in zip(axes[0], fractions):
            for method, m in g[g.fraction == f].groupby("method", sort=False):
                # detection: the share of flipped boxes in the selected images, comparable to the noise rate
                rows = [{"epoch": h["epoch"], "noisy": h.get("selected_noisy_boxes_frac", h["selected_noisy_frac"])}
                        for cid in m["id"] for h in histories.get(cid, []) if "selected_noisy_frac" in h]
                if rows:
                    curve = pd.DataFrame(rows).groupby("epoch")["noisy"].mean()
                    last = max(h["epoch"] for cid in m["id"] for h in histories.get(cid, []))
                    curve[last + 1] = curve.iloc[-1]  # a subset is trained on until the next selection
                    ax.step(curve.index, curve * 100, where="post", label=method, color=colors[method])
                    ax.plot(curve.index[:-1], curve.iloc[:-1] * 100, "o", color=colors[method])
            ax.axhline(g["noise_rate"].iloc[0] * 100, ls=":", color="k")
            ax.set(xlabel="epoch (selection points)", ylabel="noisy samples in the subset (%)", title=f"kept {f:.0%}")
        _legend(list(axes[0]), order, [(Line2D([], [], ls=":", color="k"), "noise in the training set"),
                                            (Line2D([], [], ls="", marker="o", color="grey"), "a selection")])
        fig.suptitle(title(GROUP, g), fontsize=9)
        paths += _save(fig, out, f"noisy_{_slug(key)}")
        plt.close(fig)
    return paths
