"""Paper-style tables from stored runs: Markdown, LaTeX (booktabs) and CSV.

One table per group (dataset, model, bits, noise, budget mode, and the recipe when the
runs differ in anything else that defines a run: epochs, teacher, quantization, ...): a row
per method, a column per kept fraction, each entry the mean ± std over seeds of the final-epoch test
accuracy (the headline; ``metric="best"`` shows best-over-epochs, labelled as such).
The full-data row has one value, repeated in every column as the reference. Beside
it, the difference to a reference method (random by default) with a 95% confidence
interval: paired over seeds when the runs pair up (same seed, same everything but the
method, hence the same teacher, noise draw and initial student), Welch otherwise.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from pydantic import ValidationError
from scipy import stats

from .data.catalog import display_name
from .files import atomic_write
from .cells import Cell
from .schema import spec_label

log = logging.getLogger(__name__)
GROUP = ["dataset", "model", "bits", "noise", "budget", "recipe"]
MIN_CI_SEEDS = 3  # fewer differences give no interval worth printing
# the config keys a table's axes, rows and seeds already show; every other key defines the recipe
_SHOWN = {"suite", "dataset", "model", "model_params", "w_bits", "a_bits", "noise", "method", "fraction", "seed",
          "budget.mode"}
METRICS = {"final": "final_acc", "best": "best_acc_over_epochs"}
DETECTION_METRIC = "test mAP@[.5:.95] (%)"  # what a detection cell's headline is, in place of top-1
METRIC_TITLE = {"final": "Final-epoch test top-1 (%)",
                "best": "BEST-over-epochs test top-1 (%) (test-set model selection: optimistic)"}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
    return out


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that define a run besides the table's axes, as in the cell id (paths and
    settings that cannot change the numbers left out); raw for a partial config."""
    try:
        config = Cell.model_validate(config).identity()
    except ValidationError:
        pass
    return {k: v for k, v in _flat(config).items() if k not in _SHOWN and k.split(".")[0] not in _SHOWN}


def _differing(dicts: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({json.dumps(d.get(k, "–"), sort_keys=True) for d in dicts}) > 1]


def _split_variants(rows: list[dict[str, Any]], recipes: list[dict[str, Any]], methods: list[dict[str, Any]]) -> None:
    """Runs that differ in anything that defines them are never pooled: a recipe that differs
    (3 vs 8 epochs) gives tables of their own, a method name used for two variants two rows."""
    keys = _differing(recipes)
    if keys:
        log.warning("the runs differ in %s: one table per recipe, each titled with its values", ", ".join(keys))
    for row, recipe in zip(rows, recipes):
        row["recipe"] = ", ".join(f"{k} {recipe.get(k, '–')}" for k in keys)
    by_name: dict[str, set[str]] = {}
    for m in methods:
        by_name.setdefault(m["name"], set()).add(json.dumps([m["selector"], m.get("params", {})], sort_keys=True))
    for row, m in zip(rows, methods):
        if len(by_name[m["name"]]) > 1:
            selectors = {json.loads(v)[0] for v in by_name[m["name"]]}
            name = m["name"] if len(selectors) == 1 else f"{m['name']}[{m['selector']}]"
            row["method"] = spec_label(name, m.get("params", {}))


def frame(records: Iterable[dict[str, Any]], suite: str | None = None) -> pd.DataFrame:
    """One row per finished cell: what the tables group by and what they show.

    ``proxy_seconds`` is the training time of the proxies a cell's selector read, each shared
    proxy amortised over the cells of this frame that read it (a result records every proxy's
    cache key and training seconds); ``selection_seconds`` is the selection's own time.
    """
    rows, proxies, recipes, methods = [], [], [], []
    for r in records:
        c, res = r["config"], r["result"]
        if suite and c["suite"] != suite:
            continue
        noise = "clean" if c["noise"]["kind"] == "none" else f"{c['noise']['kind']}-{c['noise']['rate']:g}"
        units = res.get("cost_units", {})
        rows.append({
            "id": r["id"], "suite": c["suite"], "dataset": spec_label(c["dataset"]["name"], c["dataset"].get("params", {})),
            "dataset_display": display_name(c["dataset"]["name"], c["dataset"].get("params", {}),
                                            c["dataset"].get("root"), c["dataset"].get("display")),
            "model": spec_label(c["model"], c.get("model_params", {})),
            "bits": f"{c['w_bits']}/{c['a_bits']}", "noise": noise,
            "noise_rate": c["noise"]["rate"], "budget": c.get("budget", {}).get("mode", "per_epoch_fraction"),
            "method": c["method"]["name"], "fraction": c["fraction"], "seed": c["seed"],
            "full": c["method"]["selector"] == "full",
            # the headline of the cell's task: top-1, or mAP for detection (``metric`` says which)
            "metric": res.get("metric", "top-1"),
            "final_acc": res["final_acc"] if "final_acc" in res else res["final_map"],
            "best_acc_over_epochs": res.get("best_acc_over_epochs", res.get("best_map_over_epochs")),
            "epochs": res["epochs"], "selection_seconds": res["selection_seconds"],
            "train_seconds": res["train_seconds"], "samples_trained": res["samples_trained"],
            "distinct_frac": res["distinct_samples_seen"] / res["train_size"],
            # detection: the share of flipped boxes among the selected images' boxes, comparable to the rate
            "noisy_selected": res.get("noisy_boxes_selected_frac_mean", res["noisy_selected_frac_mean"]),
            "cost_units": units.get("total", 3 * res["samples_trained"]),
            "selection_share": (units.get("selection", 0) + units.get("proxy", 0)) / units["total"]
            if units.get("total") else np.nan,
        })
        recipes.append(_recipe(c))
        methods.append(c["method"])
        proxy = res.get("proxy") or {}
        proxies.append(proxy.get("keys") or ({"": proxy["seconds"]} if proxy.get("seconds") else {}))
    users: dict[str, int] = {}
    for keys in proxies:
        for key in keys:
            users[key] = users.get(key, 0) + 1
    for row, keys in zip(rows, proxies):  # a result without keys (older runs) is charged its proxies in full
        row["proxy_seconds"] = sum(s / (users[k] if k else 1) for k, s in keys.items())
    _split_variants(rows, recipes, methods)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Delta:
    """Difference of a method to the reference, over seeds."""

    mean: float
    low: float
    high: float
    n: int
    paired: bool
    p_value: float

    @property
    def significant(self) -> bool:
        return self.n >= MIN_CI_SEEDS and (self.low > 0 or self.high < 0)

    def text(self) -> str:
        if self.n < MIN_CI_SEEDS:
            return f"{self.mean:+.2f} (n={self.n}, no CI)"
        mark = "*" if self.significant else ""
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]{mark}"


def delta(method: pd.DataFrame, ref: pd.DataFrame, metric: str) -> Delta | None:
    """Paired t interval over shared seeds, or Welch's when seeds do not pair up."""
    a, b = method.set_index("seed")[metric], ref.set_index("seed")[metric]
    if a.empty or b.empty:
        return None
    shared = a.index.intersection(b.index)
    if len(shared) >= 2 or len(shared) == len(a) == len(b):  # pair on the seeds both have
        d = (a[shared] - b[shared]).to_numpy()
        n, mean = len(d), float(d.mean())
        if n < MIN_CI_SEEDS:
            return Delta(mean, math.nan, math.nan, n, True, math.nan)
        sem = float(d.std(ddof=1)) / math.sqrt(n)
        low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sem) if sem > 0 else (mean, mean)
        p = float(stats.ttest_rel(a[shared], b[shared]).pvalue) if sem > 0 else math.nan
        return Delta(mean, float(low), float(high), n, True, p)
    n = min(len(a), len(b))
    mean = float(a.mean() - b.mean())
    if n < MIN_CI_SEEDS:
        return Delta(mean, math.nan, math.nan, n, False, math.nan)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    return Delta(mean, float(ci.low), float(ci.high), n, False, float(res.pvalue))


def _fraction_label(f: float) -> str:
    return f"{f:.0%}" if round(f * 100) == f * 100 else f"{f:.1%}"


def summarize(df: pd.DataFrame, metric: str = "final", vs: str = "random") -> pd.DataFrame:
    """Long form: one row per (group, method, fraction) with mean, std, n, bold, delta."""
    col = METRICS[metric]
    out = []
    for key, g in df.groupby(GROUP, sort=False):
        expected = g["seed"].nunique()
        fractions = sorted(g.loc[~g.full, "fraction"].unique()) or [1.0]
        for f in fractions:
            rows = pd.concat([g[g.full], g[(~g.full) & (g.fraction == f)]])
            ref = rows[rows.method == vs]
            for method, m in rows.groupby("method", sort=False):
                d = delta(m, ref, col) if method != vs and not m.full.iloc[0] else None
                out.append({**dict(zip(GROUP, key)), "method": method, "fraction": f, "full": bool(m.full.iloc[0]),
                            "mean": m[col].mean(), "std": m[col].std(ddof=1) if len(m) > 1 else 0.0,
                            "n": len(m), "expected": expected,
                            "delta": d.mean if d else np.nan, "ci_low": d.low if d else np.nan,
                            "ci_high": d.high if d else np.nan, "p_value": d.p_value if d else np.nan,
                            "paired": d.paired if d else None, "delta_text": d.text() if d else "",
                            "significant": d.significant if d else False,
                            "selection_seconds": m.selection_seconds.mean(), "train_seconds": m.train_seconds.mean(),
                            "proxy_seconds": m.proxy_seconds.mean(),
                            "noisy_selected": m.noisy_selected.mean(), "distinct_frac": m.distinct_frac.mean(),
                            "epochs": m.epochs.mean(), "cost_units": m.cost_units.mean(),
                            "selection_share": m.selection_share.mean(),
                            "dataset_display": g["dataset_display"].iloc[0], "metric": g["metric"].iloc[0]})
    long = pd.DataFrame(out)
    if long.empty:
        return long
    # bold: the best coreset method per column, and any within one std of it
    long["bold"] = False
    for _, idx in long[~long.full].groupby([*GROUP, "fraction"], sort=False).groups.items():
        sub = long.loc[idx]
        best = sub["mean"].idxmax()
        long.loc[idx, "bold"] = sub["mean"] >= sub.at[best, "mean"] - sub.at[best, "std"]
    return long


def method_order(df: pd.DataFrame, vs: str = "random") -> list[str]:
    """The methods of ``df``: full-data rows first, then the reference, then the others as they come; one
    order for tables, fair.md and legends."""
    methods, full = list(dict.fromkeys(df["method"])), set(df.loc[df.full, "method"])
    first = [m for m in methods if m in full] + [m for m in methods if m == vs and m not in full]
    return list(dict.fromkeys([*first, *methods]))


def _entry(r: pd.Series) -> str:
    text = f"{r['mean']:.2f} ± {r['std']:.2f}" if r["n"] > 1 else f"{r['mean']:.2f}"
    return text + (f" (n={r['n']})" if r["n"] < r["expected"] else "")


def grid(long: pd.DataFrame, value: str, vs: str = "random") -> pd.DataFrame:
    """methods x fractions of one group, entries from column ``value`` (already text)."""
    cols = [_fraction_label(f) for f in sorted(long["fraction"].unique())]
    methods = method_order(long, vs)
    table = pd.DataFrame("–", index=methods, columns=cols, dtype=object)
    for _, r in long.iterrows():
        table.at[r["method"], _fraction_label(r["fraction"])] = r[value]
    table.index.name = "method"
    return table


def _md(table: pd.DataFrame) -> str:
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    lines += ["| " + " | ".join([str(i), *map(str, r)]) + " |" for i, r in zip(table.index, table.to_numpy())]
    return "\n".join(lines)


def _tex_escape(text: str) -> str:
    return text.replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$").replace("–", "--")


def _tex(table: pd.DataFrame, caption: str) -> str:
    spec = "l" + "r" * len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex_escape(caption)}}}",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(["Method", *(_tex_escape(c) for c in table.columns)]) + r" \\", r"\midrule"]
    for i, row in zip(table.index, table.to_numpy()):
        cells = [c.replace("**", "") if not c.startswith("**") else r"\textbf{" + c.strip("*") + "}" for c in row]
        lines.append(" & ".join([_tex_escape(str(i)), *(_tex_escape(c) for c in cells)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def title(keys: list[str], g: pd.DataFrame) -> str:
    """'dataset CIFAR-10 (10k/2k), model resnet8, ...': a group's heading, the data set by its display name;
    the recipe, when runs differ in it, as its own values ('train.epochs 3')."""
    parts = [str(g["recipe"].iloc[0]) if k == "recipe" else f"{k} {g['dataset_display' if k == 'dataset' else k].iloc[0]}"
             for k in keys]
    return ", ".join(p for p in parts if p)


def render(long: pd.DataFrame, metric: str = "final", vs: str = "random", extras: bool = False) -> dict[str, str]:
    """{"md": ..., "tex": ..., "csv": ...} for every group of ``summarize``'s output."""
    if long.empty:
        return {"md": "No finished runs.\n", "tex": "% no finished runs\n", "csv": ""}
    long = long.copy()
    long["text"] = [f"**{_entry(r)}**" if r["bold"] else _entry(r) for _, r in long.iterrows()]
    md = [f"{METRIC_TITLE[metric]}, mean ± std over seeds; (n=k) marks missing seeds; **bold**: best "
          f"coreset method per column and any within one std of it; `full` trains on all data every epoch and is "
          f"repeated in every column. Δ vs {vs}: mean difference with its 95% confidence interval, paired over "
          f"seeds where the runs pair up (no interval with fewer than {MIN_CI_SEEDS} seeds); * marks an interval "
          f"that excludes 0.\n"]
    tex = [f"% generated by qcore-bench: {METRIC_TITLE[metric]}"]
    if (long.get("metric") == "mAP").any():
        md[0] += f"Detection tables ('metric mAP' in their heading) show the {DETECTION_METRIC} instead of top-1.\n"
    for _, g in long.groupby(GROUP, sort=False):
        heading = title(GROUP, g) + (", metric mAP" if "metric" in g and g["metric"].iloc[0] == "mAP" else "")
        md.append(f"### {heading}\n\n{_md(grid(g, 'text', vs))}\n")
        deltas = g[g["delta_text"] != ""]
        if not deltas.empty:
            interval = "no CI under 3 seeds" if deltas["ci_low"].isna().all() else "95% CI"
            md.append(f"Δ vs {vs} ({'paired' if deltas['paired'].all() else 'Welch'}, {interval}):\n\n"
                      f"{_md(grid(deltas, 'delta_text', vs))}\n")
        if extras:
            g = g.assign(extra=[f"sel {r.selection_seconds:.1f}s, proxy {r.proxy_seconds:.1f}s, train "
                                f"{r.train_seconds:.1f}s, noisy {r.noisy_selected:.1%}, seen {r.distinct_frac:.0%}"
                                for r in g.itertuples()])
            md.append(f"Cost and robustness (mean over seeds; sel: the selection's own time; proxy: training of "
                      f"the proxy models it read, each amortised over the cells of this table that share it; "
                      f"noisy: share of label-noisy samples in the selected subsets):\n\n"
                      f"{_md(grid(g, 'extra', vs))}\n")
        tex.append(_tex(grid(g, "text", vs), f"{heading}: {METRIC_TITLE[metric]}"))
    csv = long.drop(columns=["text"]).to_csv(index=False)
    return {"md": "\n".join(md), "tex": "\n\n".join(tex) + "\n", "csv": csv}


def fair_report(df: pd.DataFrame, vs: str = "random") -> str:
    """Per group and fraction: accuracy in both budget modes, coverage, selection cost share, noisy share."""
    if df.empty:
        return "No finished runs.\n"
    headline = "top-1" if (df["metric"] == "top-1").all() else "top-1 (mAP@[.5:.95] in groups headed 'metric mAP')"
    out = [f"Fair comparison: final-epoch {headline} at equal per-epoch fraction (the paper's protocol) and at equal "
           "total compute (cost model in the README), distinct training samples seen over the run, the share of "
           "compute spent selecting (scoring passes and proxies), and the share of label-noisy samples in the "
           f"selected subsets; Δ is paired against {vs} where seeds pair up.\n"]
    keys = [k for k in GROUP if k != "budget"]
    for _, g in df.groupby(keys, sort=False):
        rows = []
        for f in sorted(g.loc[~g.full, "fraction"].unique()):
            part = pd.concat([g[g.full], g[(~g.full) & (g.fraction == f)]])
            for method in method_order(part, vs):
                m = part[part.method == method]
                row = {"fraction": _fraction_label(f), "method": method}
                for mode, label in (("per_epoch_fraction", "acc @ equal fraction"), ("total_compute", "acc @ equal compute")):
                    mm = m[m.budget == mode]
                    ref = part[(part.method == vs) & (part.budget == mode)]
                    d = delta(mm, ref, "final_acc") if method != vs and not mm.empty and not mm.full.iloc[0] else None
                    row[label] = "–" if mm.empty else (
                        f"{mm.final_acc.mean():.2f} ± {mm.final_acc.std(ddof=1) if len(mm) > 1 else 0:.2f}"
                        + (f" (Δ {d.text()})" if d else ""))
                row["epochs @ equal compute"] = (f"{m[m.budget == 'total_compute'].epochs.mean():.1f}"
                                                 if (m.budget == "total_compute").any() else "–")
                row["distinct seen"] = f"{m.distinct_frac.mean():.0%}"
                row["selection cost share"] = f"{m.selection_share.mean():.1%}"
                row["noisy in subset"] = f"{m.noisy_selected.mean():.1%}"
                rows.append(row)
        table = pd.DataFrame(rows).set_index(["fraction", "method"])
        table.index = [f"{a} {b}" for a, b in table.index]
        table.index.name = "fraction, method"
        mark = ", metric mAP" if g["metric"].iloc[0] == "mAP" else ""
        out.append(f"### {title(keys, g)}{mark}\n\n{_md(table)}\n")
    return "\n".join(out)


def write_reports(df: pd.DataFrame, out: Path, formats: list[str], metric: str = "final", vs: str = "random",
                  extras: bool = False, fair: bool = False) -> list[Path]:
    """Write tables.{md,tex,csv} (and fair.md) atomically into ``out``; returns the paths."""
    rendered = render(summarize(df, metric, vs), metric, vs, extras)
    paths = []
    for fmt in formats:
        path = out / f"tables.{fmt}"
        atomic_write(path, lambda f, text=rendered[fmt]: f.write(text))
        paths.append(path)
    if fair:
        path = out / "fair.md"
        text = fair_report(df, vs)
        atomic_write(path, lambda f: f.write(text))
        paths.append(path)
    return paths
